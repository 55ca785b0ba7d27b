"""`torch.distributed.elastic` import paths scripts use: `multiprocessing.errors.record`."""
