"""The arithmetic of convolutions on NumPy arrays, in one place: `F.conv2d` and its two
adjoints (the reference meaning of `step.conv2d`, `step.conv2d_input_grad` and
`step.conv2d_weight_grad`), and XLA's general convolution (`stablehlo.convolution`, for the
backends that evaluate it with NumPy).

Layouts are PyTorch's: inputs NxCxHxW, kernels OxC/groupsxKHxKW. Every product is one
`np.matmul` over the whole reduction (channels of a group times kernel taps, or batch times
output positions for the kernel's adjoint) in the dtype of the operands, as `step.matmul`'s
meaning is: float64 operands accumulate in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Array = np.ndarray


def output_size(size: int, kernel: int, stride: int, low: int, high: int, dilation: int) -> int:
    """Positions of a dilated kernel in a padded dim (`(size + low + high - reach) // stride + 1`)."""
    return (size + low + high - dilation * (kernel - 1) - 1) // stride + 1


def _taps(kernel: int, out: int, stride: int, dilation: int) -> Array:
    """Index of each (kernel tap, output position) in the padded dim: `k dilation + o stride`."""
    return np.arange(kernel)[:, None] * dilation + np.arange(out)[None, :] * stride


def _patches(padded: Array, kernel: Sequence[int], out: Sequence[int], stride: Sequence[int],
             dilation: Sequence[int]) -> Array:  # fmt: skip
    """`padded[n, c, kh d + oh s, kw d + ow s]` as an array NxCxKHxKWxOHxOW."""
    rows = _taps(kernel[0], out[0], stride[0], dilation[0])
    cols = _taps(kernel[1], out[1], stride[1], dilation[1])
    return padded[:, :, rows[:, None, :, None], cols[None, :, None, :]]


def _pad(x: Array, padding: Sequence[tuple[int, int]]) -> Array:
    """Zeros around the spatial dims (a negative amount crops, as XLA's padding does)."""
    grown = np.pad(x, [(0, 0), (0, 0), *((max(lo, 0), max(hi, 0)) for lo, hi in padding)])
    crop = tuple(slice(max(-lo, 0), grown.shape[2 + i] - max(-hi, 0)) for i, (lo, hi) in enumerate(padding))
    return grown[(slice(None), slice(None), *crop)]


def _dilate(x: Array, dilation: Sequence[int]) -> Array:
    """`dilation - 1` zeros between neighbours along each spatial dim (XLA's lhs dilation)."""
    if all(d == 1 for d in dilation):
        return x
    shape = (*x.shape[:2], *((s - 1) * d + 1 if s else 0 for s, d in zip(x.shape[2:], dilation)))
    out = np.zeros(shape, dtype=x.dtype)
    out[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = x
    return out


def conv2d(x: Array, w: Array, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
           groups: int) -> Array:  # fmt: skip
    """`F.conv2d(x, w, None, stride, padding, dilation, groups)`."""
    return convolution(x, w, stride, [(p, p) for p in padding], (1, 1), dilation, groups, 1)


def conv2d_input_grad(cotangent: Array, w: Array, input_shape: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int], groups: int) -> Array:  # fmt: skip
    """The adjoint of `conv2d` in its input (`torch.nn.grad.conv2d_input`): each output
    position's cotangent times the kernel, added back onto the input elements it read; input
    elements no window reads (the rows a stride leaves over) get 0."""
    n, c, h, wd = input_shape
    o, cg, kh, kw = w.shape
    oh, ow = cotangent.shape[2:]
    og = o // groups
    dy = cotangent.reshape(n, groups, og, oh * ow)
    kernel = w.reshape(groups, og, cg * kh * kw)
    # (n, g, cg kh kw, oh ow): the contribution of each output position to each tap
    taps = np.matmul(np.swapaxes(kernel, 1, 2)[None], dy).reshape(n, c, kh, kw, oh, ow)
    padded = np.zeros((n, c, h + 2 * padding[0], wd + 2 * padding[1]), dtype=taps.dtype)
    rows = _taps(kh, oh, stride[0], dilation[0])
    cols = _taps(kw, ow, stride[1], dilation[1])
    for i in range(kh):  # one tap at a time: an element several windows read gets each share
        for j in range(kw):
            padded[:, :, rows[i][:, None], cols[j][None, :]] += taps[:, :, i, j]
    return padded[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + wd]


def conv2d_weight_grad(x: Array, cotangent: Array, kernel_shape: Sequence[int], stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int], groups: int) -> Array:  # fmt: skip
    """The adjoint of `conv2d` in its kernel (`torch.nn.grad.conv2d_weight`): each tap's
    cotangent is the sum over the batch and the output positions of the cotangent times the
    input element the tap read there."""
    o, cg, kh, kw = kernel_shape
    n, _, oh, ow = cotangent.shape
    padded = _pad(x, [(p, p) for p in padding])
    patches = _patches(padded, (kh, kw), (oh, ow), stride, dilation)  # n, c, kh, kw, oh, ow
    patches = patches.reshape(n, groups, cg * kh * kw, oh * ow).transpose(1, 0, 3, 2).reshape(groups, n * oh * ow, -1)
    dy = cotangent.reshape(n, groups, o // groups, oh * ow).transpose(1, 2, 0, 3).reshape(groups, o // groups, -1)
    return np.matmul(dy, patches).reshape(o, cg, kh, kw)


def convolution(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Sequence[tuple[int, int]],
                lhs_dilation: Sequence[int], rhs_dilation: Sequence[int], feature_group_count: int,
                batch_group_count: int) -> Array:  # fmt: skip
    """XLA's convolution with 2 spatial dims, lhs NxCxHxW, rhs OxIxKHxKW, result NxOxOHxOW
    (`lax.conv_general_dilated` in those layouts): the lhs dilated and padded, then each output
    feature o of group g = o // (O / groups) the sum over the group's input features and the
    kernel taps. Feature groups split C (I = C / groups); batch groups split N (the result has
    N / groups rows and O splits into the same groups)."""
    x = _pad(_dilate(lhs, lhs_dilation), padding)
    o, i, kh, kw = rhs.shape
    out = [output_size(x.shape[2 + d], rhs.shape[2 + d], window_strides[d], 0, 0, rhs_dilation[d]) for d in range(2)]
    patches = _patches(x, (kh, kw), out, window_strides, rhs_dilation)  # n, c, kh, kw, oh, ow
    n, c = patches.shape[:2]
    fg, bg = feature_group_count, batch_group_count
    groups = fg * bg  # one of them is 1
    # (groups, rows, i kh kw, oh ow) with rows the result's batch rows of that group
    if bg > 1:
        grouped = patches.reshape(bg, n // bg, c * kh * kw, out[0] * out[1])
    else:
        grouped = patches.reshape(n, fg, c // fg * kh * kw, out[0] * out[1]).transpose(1, 0, 2, 3)
    kernel = rhs.reshape(groups, 1, o // groups, i * kh * kw)
    result = np.matmul(kernel, grouped)  # (groups, rows, o / groups, oh ow)
    rows = result.shape[1]
    return result.transpose(1, 0, 2, 3).reshape(rows, o, out[0], out[1])
