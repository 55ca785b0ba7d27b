"""The double-backward-with-custom-Functions tutorial: autograd.Functions whose backward is
itself differentiable. Saving an input (square) or an output (exp) with save_for_backward
works under create_graph; an intermediate result (sinh's exp(x), exp(-x)) works only when the
Function also returns it (then its backward takes three gradients), and a hidden one stashed
on ctx gives a gradient with no graph; a backward autograd cannot follow (cube's, as if written
in NumPy) is made differentiable by a second Function with its own backward. gradcheck and
gradgradcheck judge each, and second derivatives are computed with autograd.grad."""
import torch


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        return grad_out * 2 * x


class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        result = torch.exp(x)
        ctx.save_for_backward(result)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        result, = ctx.saved_tensors
        return result * grad_out


class Sinh(torch.autograd.Function):
    """Returns its intermediates too, so the graph of its backward reaches x through them."""

    @staticmethod
    def forward(ctx, x):
        ex, enx = torch.exp(x), torch.exp(-x)
        ctx.save_for_backward(ex, enx)
        return (ex - enx) / 2, ex, enx

    @staticmethod
    def backward(ctx, grad_out, grad_ex, grad_enx):
        ex, enx = ctx.saved_tensors
        grad_input = grad_out * (ex + enx) / 2
        grad_input += grad_ex * ex
        grad_input -= grad_enx * enx
        return grad_input


def sinh(x):
    return Sinh.apply(x)[0]


class HiddenSinh(torch.autograd.Function):
    """What not to do: the intermediates ride on ctx, made under no_grad in forward."""

    @staticmethod
    def forward(ctx, x):
        ctx.ex, ctx.enx = torch.exp(x), torch.exp(-x)
        return (ctx.ex - ctx.enx) / 2

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out * (ctx.ex + ctx.enx) / 2


def cube_backward(grad_out, x):
    return grad_out * 3 * x ** 2


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        return CubeBackward.apply(grad_out, x)


class CubeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_out, x):
        ctx.save_for_backward(x, grad_out)
        return cube_backward(grad_out, x)

    @staticmethod
    def backward(ctx, grad_grad):
        x, saved_grad_out = ctx.saved_tensors
        return grad_grad * 3 * x ** 2, grad_grad * saved_grad_out * 6 * x


def main(seed=0, compile=False, initial_state=None):
    torch.manual_seed(seed)
    values = {}
    x = torch.rand(3, 3, requires_grad=True, dtype=torch.double)
    values["square_gradcheck"] = torch.autograd.gradcheck(Square.apply, x)
    values["square_gradgradcheck"] = torch.autograd.gradgradcheck(Square.apply, x)
    y = torch.tensor(1., requires_grad=True).clone()
    out = Square.apply(y)
    grad_y, = torch.autograd.grad(out, y, create_graph=True)
    values["square_grad"] = grad_y.detach()
    values["square_grad_fn"] = grad_y.grad_fn.name()
    values["square_second"] = torch.autograd.grad(grad_y, y)[0]

    e = torch.tensor(1., requires_grad=True, dtype=torch.double).clone()
    values["exp_gradcheck"] = torch.autograd.gradcheck(Exp.apply, e)
    values["exp_gradgradcheck"] = torch.autograd.gradgradcheck(Exp.apply, e)
    out = Exp.apply(e)
    grad_e, = torch.autograd.grad(out, e, create_graph=True)
    values["exp_second"] = torch.autograd.grad(grad_e, e)[0]

    s = torch.rand(3, 3, requires_grad=True, dtype=torch.double)
    values["sinh_gradcheck"] = torch.autograd.gradcheck(sinh, s)
    values["sinh_gradgradcheck"] = torch.autograd.gradgradcheck(sinh, s)
    grad_s, = torch.autograd.grad(sinh(s).sum(), s, create_graph=True)
    values["sinh_grad"] = grad_s.detach()
    values["sinh_second"] = torch.autograd.grad(grad_s.sum(), s)[0]   # sinh'' = sinh

    grad_h, = torch.autograd.grad(HiddenSinh.apply(s).sum(), s, create_graph=True)
    values["hidden_grad"] = grad_h.detach()
    values["hidden_grad_has_graph"] = grad_h.requires_grad
    try:
        torch.autograd.grad(grad_h.sum(), s)
        values["hidden_second_raises"] = False
    except RuntimeError:
        values["hidden_second_raises"] = True

    c = torch.tensor(2., requires_grad=True, dtype=torch.double)
    values["cube_gradcheck"] = torch.autograd.gradcheck(Cube.apply, c)
    values["cube_gradgradcheck"] = torch.autograd.gradgradcheck(Cube.apply, c)
    grad_c, = torch.autograd.grad(Cube.apply(c), c, create_graph=True)
    values["cube_grad"] = grad_c.detach()
    values["cube_second"] = torch.autograd.grad(grad_c, c)[0]
    values["cube_grad_fn"] = grad_c.grad_fn.name()
    return {"values": values}
