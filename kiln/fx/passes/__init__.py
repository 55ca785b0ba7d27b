"""Passes over kiln.fx graphs (torch.fx.passes): `shape_prop.ShapeProp`."""
