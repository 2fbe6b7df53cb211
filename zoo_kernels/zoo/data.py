"""MiniZoo data: source domains and target tasks, generated deterministically from seeds.

Every image is 32x32 grayscale, float32 in [0, 1], quantized to 256 levels (like an 8-bit image), shape
``[N, 1, 32, 32]``; labels are int64 ``[N]``. Nothing is downloaded: the generators use numpy/torch and,
for glyphs, the TrueType fonts that ship inside matplotlib (DejaVu Sans/Serif/Mono, STIX General, Computer
Modern), rasterized with matplotlib's FreeType wrapper ``FT2Font``.

Randomness comes only from ``numpy.random.default_rng`` seeded by a SHA-256 of a key such as
``("source", "latin", "train", 0)``, so the same call gives the same bytes in any process. (Glyph bitmaps
depend on the FreeType bundled with matplotlib; ``fingerprint`` records it.)

Source domains (pre-training):  latin, greekcyr, pendigits, shapes, textures.
Target tasks (fine-tuning): see ``TARGETS``; each holds out something the sources do not show (unseen fonts,
new classes, new styles, contrast inversion, new texture parameters, compositions).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32
DATA_VERSION = 1
TRAIN_PER_CLASS = 50  # the train pool of a target; `shots` takes the first k per class of it (nested splits)
TEST_MIN_PER_CLASS = 20
TEST_TOTAL = 600  # test split: max(TEST_MIN_PER_CLASS, ceil(TEST_TOTAL / C)) per class

# ---------------------------------------------------------------------------------------------------------
# seeds


def rng_for(*key) -> np.random.Generator:
    """A numpy Generator seeded by the SHA-256 of ``key`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("/".join(str(k) for k in key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _finish(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and quantize to 8-bit levels (makes the data robust to float noise across platforms)."""
    return (x.clamp(0, 1) * 255).round().div(255).to(torch.float32).contiguous()


def _pixel_grid(size: int = SIZE) -> torch.Tensor:
    """Pixel centers as (x, y) in pixel units, y down, origin at the image center: [size*size, 2] float64."""
    c = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def _blur3(x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """3×3 binomial blur, `chunk` images at a time (float64 conv2d unfolds its input: 15 GB at N = 200,000)."""
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype)
    k2 = (k[:, None] * k[None, :]).view(1, 1, 3, 3)
    return torch.cat([F.conv2d(F.pad(x[s:s + chunk], (1, 1, 1, 1), mode="replicate"), k2)
                      for s in range(0, len(x), chunk)])


def _photometric(x: torch.Tensor, rng: np.random.Generator, *, noise=(0.0, 0.06), bg=(0.0, 0.2), fg=(0.75, 1.0),
                 blur=0.5, invert=False) -> torch.Tensor:
    """Ink-on-background rendering of a [N,1,H,W] mask in [0,1]: random blur, levels, Gaussian noise."""
    n = x.shape[0]
    a = torch.from_numpy(rng.uniform(0, blur, n)).view(n, 1, 1, 1)
    x = (1 - a) * x + a * _blur3(x)
    lo = torch.from_numpy(rng.uniform(*bg, n)).view(n, 1, 1, 1)
    hi = torch.from_numpy(rng.uniform(*fg, n)).view(n, 1, 1, 1)
    x = lo + (hi - lo) * x
    if invert:
        x = 1 - x
    sd = torch.from_numpy(rng.uniform(*noise, n)).view(n, 1, 1, 1)
    x = x + sd * torch.from_numpy(rng.standard_normal(x.shape))
    return x


# ---------------------------------------------------------------------------------------------------------
# glyphs (matplotlib's fonts)

LATIN_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LATIN_LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
GREEK_LOWER = "αβγδεζηθικλμνξοπρστυφχψω"
GREEK_UPPER = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"
CYRILLIC_LOWER = "абвгдежзийклмнопрстуфхцчшщъыьэюя"
MATH_SYMBOLS = "+−×÷=≠<>≤≥∑∫√∞∂∇"

# Fonts seen in pre-training vs fonts only the targets use.
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")
HELDOUT_FONTS = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
                 "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSerif-Italic.ttf",
                 "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono-Oblique.ttf")
HELDOUT_LATIN_FONTS = HELDOUT_FONTS + ("cmr10.ttf", "cmss10.ttf", "cmtt10.ttf")  # Computer Modern: no Greek/Cyrillic
STIX_STYLES = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")

_TEMPLATE = 64  # glyphs are rasterized into 64x64 templates, then warped down to 32x32
_EM_PX = 40


def font_dir() -> str:
    import matplotlib  # noqa: PLC0415  (only the glyph generators need matplotlib)

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def freetype_version() -> str:
    try:
        from matplotlib import ft2font  # noqa: PLC0415
    except ImportError:
        return "none"
    return str(ft2font.__freetype_version__)


@functools.lru_cache(maxsize=None)
def _font(name: str):
    from matplotlib.ft2font import FT2Font  # noqa: PLC0415

    return FT2Font(os.path.join(font_dir(), name))


def has_glyph(font: str, ch: str) -> bool:
    return _font(font).get_char_index(ord(ch)) != 0


def _render_glyph(ch: str, font: str) -> np.ndarray:
    f = _font(font)
    f.set_size(_EM_PX, 72)
    f.set_text(ch, 0.0)
    f.draw_glyphs_to_bitmap(antialiased=True)
    img = np.asarray(f.get_image(), dtype=np.float32) / 255.0
    canvas = np.zeros((_TEMPLATE, _TEMPLATE), np.float32)
    h, w = img.shape
    if h > _TEMPLATE - 4 or w > _TEMPLATE - 4:  # oversized glyph (e.g. a big integral sign): shrink by striding
        step = int(math.ceil(max(h, w) / (_TEMPLATE - 4)))
        img = img[::step, ::step]
        h, w = img.shape
    t, l = (_TEMPLATE - h) // 2, (_TEMPLATE - w) // 2
    canvas[t:t + h, l:l + w] = img
    return canvas


@functools.lru_cache(maxsize=64)
def glyph_templates(chars: str, fonts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """[len(chars), len(fonts), 64, 64] templates and a [len(chars), len(fonts)] bool mask of glyphs present."""
    out = np.zeros((len(chars), len(fonts), _TEMPLATE, _TEMPLATE), np.float32)
    ok = np.zeros((len(chars), len(fonts)), bool)
    for i, ch in enumerate(chars):
        for j, fo in enumerate(fonts):
            if has_glyph(fo, ch):
                out[i, j] = _render_glyph(ch, fo)
                ok[i, j] = out[i, j].max() > 0
    if not ok.any(axis=1).all():
        missing = [chars[i] for i in np.flatnonzero(~ok.any(axis=1))]
        raise ValueError(f"no font among {fonts} has the glyphs {missing}")
    return torch.from_numpy(out), torch.from_numpy(ok)


def _pick_fonts(ok: torch.Tensor, char_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each sample a uniformly random font that has its character."""
    okn = ok.numpy()[char_idx].astype(np.float64)
    u = rng.random(len(char_idx))[:, None] * okn.sum(1, keepdims=True)
    return np.minimum((np.cumsum(okn, 1) <= u).sum(1), okn.shape[1] - 1)


def _warp(templates: torch.Tensor, rng: np.random.Generator, *, rot=10.0, scale=(0.85, 1.15), shear=0.15,
          shift=0.12, thick=(0.07, 0.5, 0.3, 0.13)) -> torch.Tensor:
    """Random stroke width + affine warp of [N,64,64] templates to [N,1,32,32]."""
    n = templates.shape[0]
    t = templates.unsqueeze(1).double()
    variants = [-F.max_pool2d(-t, 3, 1, 1), t, F.max_pool2d(t, 3, 1, 1), F.max_pool2d(t, 5, 1, 2)]
    level = rng.choice(4, size=n, p=np.asarray(thick) / np.sum(thick))
    t = torch.stack(variants)[torch.from_numpy(level), torch.arange(n)]
    ang = np.deg2rad(rng.uniform(-rot, rot, n))
    s = rng.uniform(*scale, n)
    sh = rng.uniform(-shear, shear, n)
    c, si = np.cos(ang), np.sin(ang)
    # output -> input map (normalized coords): inverse of (rotate . shear . scale)
    a = np.stack([np.stack([c, -si], -1), np.stack([si, c], -1)], -2)  # [n,2,2] rotation
    shm = np.zeros((n, 2, 2))
    shm[:, 0, 0] = 1
    shm[:, 1, 1] = 1
    shm[:, 0, 1] = sh
    fwd = a @ shm * s[:, None, None]
    inv = np.linalg.inv(fwd)
    tr = rng.uniform(-shift, shift, (n, 2))
    theta = np.concatenate([inv, (-inv @ tr[:, :, None])], axis=2)
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, SIZE, SIZE], align_corners=False)
    # downsample by 2 with a little pre-blur so that thin strokes do not alias
    t = F.avg_pool2d(F.pad(t, (1, 1, 1, 1)), 3, 1)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render_glyphs(chars: str, fonts: tuple, char_idx: np.ndarray, rng: np.random.Generator, *, font_idx=None,
                  warp: dict | None = None, photo: dict | None = None, chunk: int = 1024) -> torch.Tensor:
    """Images of ``chars[char_idx[i]]`` in random fonts (or ``font_idx``) with random warps and photometrics."""
    templ, ok = glyph_templates(chars, tuple(fonts))
    char_idx = np.asarray(char_idx)
    if font_idx is None:
        font_idx = _pick_fonts(ok, char_idx, rng)
    outs = []
    for s in range(0, len(char_idx), chunk):
        ci, fi = char_idx[s:s + chunk], font_idx[s:s + chunk]
        x = _warp(templ[torch.from_numpy(ci), torch.from_numpy(fi)], rng, **(warp or {}))
        outs.append(_photometric(x, rng, **(photo or {})))
    return _finish(torch.cat(outs))


# ---------------------------------------------------------------------------------------------------------
# pen-drawn digits (procedural handwriting: digit skeletons, smooth random deformation, variable pen)


def _arc(cx, cy, rx, ry, a0, a1, n=14):
    a = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], -1)


def _line(p, q):
    return np.asarray([p, q], np.float64)


def _digit_strokes() -> list[list[np.ndarray]]:
    """Polylines per digit in a box x in [-0.5, 0.5], y in [-0.8, 0.8] (y up)."""
    return [
        [_arc(0, 0, 0.42, 0.78, 90, 450, 28)],
        [np.asarray([[-0.22, 0.5], [0.04, 0.8], [0.04, -0.8]])],
        [np.concatenate([_arc(0, 0.38, 0.4, 0.4, 160, -30, 14), [[-0.45, -0.8], [0.47, -0.8]]])],
        [_arc(0, 0.42, 0.36, 0.38, 150, -90, 14), _arc(0, -0.36, 0.42, 0.44, 90, -150, 16)],
        [np.asarray([[0.22, 0.8], [-0.46, -0.3], [0.46, -0.3]]), _line([0.22, 0.8], [0.22, -0.8])],
        [np.concatenate([[[0.42, 0.8], [-0.3, 0.8], [-0.36, 0.1]], _arc(0.0, -0.34, 0.44, 0.46, 125, -150, 16)])],
        [np.concatenate([_arc(0.08, -0.05, 0.48, 0.85, 70, 185, 10), _arc(0.0, -0.4, 0.42, 0.4, 185, 545, 22)])],
        [np.asarray([[-0.46, 0.8], [0.46, 0.8], [-0.08, -0.8]])],
        [_arc(0, 0.44, 0.33, 0.36, 0, 360, 20), _arc(0, -0.36, 0.42, 0.44, 0, 360, 22)],
        [np.concatenate([_arc(0, 0.4, 0.4, 0.4, -5, 355, 22), [[0.38, 0.3], [0.2, -0.8]]])],
    ]


@functools.lru_cache(maxsize=1)
def _digit_segments() -> torch.Tensor:
    """[10, S, 2, 2] segment endpoints per digit, padded with far-away degenerate segments."""
    segs = []
    for strokes in _digit_strokes():
        s = [np.stack([pl[:-1], pl[1:]], 1) for pl in strokes]
        segs.append(np.concatenate(s))
    smax = max(len(s) for s in segs)
    out = np.full((10, smax, 2, 2), 50.0)
    for i, s in enumerate(segs):
        out[i, :len(s)] = s
    return torch.from_numpy(out)


def _segment_dist(pix: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of pixels [P,2] to segments a,b [N,S,2] -> [N,P] (min over segments)."""
    ab = (b - a).unsqueeze(1)  # [N,1,S,2]
    ap = pix.view(1, -1, 1, 2) - a.unsqueeze(1)  # [N,P,S,2]
    t = ((ap * ab).sum(-1) / (ab.pow(2).sum(-1) + 1e-12)).clamp(0, 1)
    d = (ap - t.unsqueeze(-1) * ab).norm(dim=-1)
    return d.min(-1).values


def render_pen_digits(labels: np.ndarray, rng: np.random.Generator, *, width=(0.05, 0.1), rot=12.0,
                      slant=(-0.35, 0.2), wobble=0.06, clutter=0, photo: dict | None = None,
                      chunk: int = 256) -> torch.Tensor:
    """Digits drawn with a pen: class skeleton, smooth random deformation, random slant/rotation/scale/width."""
    labels = np.asarray(labels)
    n = len(labels)
    seg = _digit_segments()[torch.from_numpy(labels)]  # [n,S,2,2]
    # smooth deformation field: sum of 3 random sinusoids per axis
    k = rng.normal(0, 2.2, (n, 3, 2))
    ph = rng.uniform(0, 2 * np.pi, (n, 3, 2))
    amp = rng.uniform(0, wobble, (n, 3, 2))
    p = seg.numpy()
    arg = np.einsum("nspc,nkc->nspk", p, k)[..., None] + ph[:, None, None]  # [n,S,2,K,2]
    p = p + (amp[:, None, None] * np.sin(arg)).sum(-2)
    p = p + rng.normal(0, 0.01, p.shape)
    ang = np.deg2rad(rng.uniform(-rot, rot, n))
    sl = rng.uniform(*slant, n)
    sx, sy = rng.uniform(0.8, 1.1, n), rng.uniform(0.85, 1.1, n)
    c, s = np.cos(ang), np.sin(ang)
    m = np.zeros((n, 2, 2))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 1] = sx, sl * sy, sy
    r = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    m = r @ m
    tr = rng.uniform(-0.1, 0.1, (n, 2))
    far = np.abs(seg.numpy()) > 10
    p = np.einsum("nij,nspj->nspi", m, p) + tr[:, None, None]
    p = np.where(far, 50.0, p)
    # to pixel units (y down): the canvas spans [-1.15, 1.15]
    scale_px = SIZE / 2.3
    pp = torch.from_numpy(p * np.array([scale_px, -scale_px]))
    wpx = torch.from_numpy(rng.uniform(*width, n) * scale_px).view(n, 1)
    pix = _pixel_grid()
    outs = []
    for st in range(0, n, chunk):
        d = _segment_dist(pix, pp[st:st + chunk, :, 0], pp[st:st + chunk, :, 1])
        outs.append((wpx[st:st + chunk] - d + 0.5).clamp(0, 1))
    x = torch.cat(outs).view(n, 1, SIZE, SIZE)
    if clutter:
        x = torch.maximum(x, _random_strokes(n, clutter, rng))
    return _finish(_photometric(x, rng, **(photo or {})))


def _random_strokes(n: int, count: int, rng: np.random.Generator, chunk: int = 4096) -> torch.Tensor:
    """``count`` short random line segments per image (distractors), [n,1,32,32]; the distances `chunk` images at
    a time (all at once took 30 GB at n = 200,000)."""
    a = torch.from_numpy(rng.uniform(-14, 14, (n, count, 2)))
    b = a + torch.from_numpy(rng.normal(0, 5, (n, count, 2)))
    d = torch.cat([_segment_dist(_pixel_grid(), a[s:s + chunk], b[s:s + chunk]) for s in range(0, n, chunk)])
    return (1.2 - d).clamp(0, 1).view(n, 1, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------------------
# shapes (signed distance functions, in local units where the shape has radius ~1)


def _sd_polygon(p: torch.Tensor, v: np.ndarray) -> torch.Tensor:
    """Exact signed distance of points p [...,2] to a simple polygon with vertices v [E,2] (negative inside)."""
    v = torch.from_numpy(np.asarray(v, np.float64))
    a, b = v, torch.roll(v, -1, 0)
    e = b - a  # [E,2]
    w = p.unsqueeze(-2) - a  # [...,E,2]
    t = ((w * e).sum(-1) / (e * e).sum(-1)).clamp(0, 1)
    d = (w - t.unsqueeze(-1) * e).norm(dim=-1).min(-1).values
    # crossing number (even-odd rule)
    py = p[..., 1:2]
    px = p[..., 0:1]
    cond = (a[:, 1] > py) != (b[:, 1] > py)
    xint = a[:, 0] + (py - a[:, 1]) * e[:, 0] / torch.where(e[:, 1] == 0, torch.full_like(e[:, 1], 1e-12), e[:, 1])
    inside = (cond & (px < xint)).sum(-1) % 2 == 1
    return torch.where(inside, -d, d)


def _regular(n, r=1.0, phase=0.0):
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.sin(a), -r * np.cos(a)], -1)


def _star(k, r_in=0.45):
    v = _regular(2 * k)
    v[1::2] *= r_in
    return v


def _sd_circle(p, c=(0.0, 0.0), r=1.0):
    return (p - torch.tensor(c, dtype=p.dtype)).norm(dim=-1) - r


SHAPES = {
    "circle": lambda p: _sd_circle(p, r=0.9),
    "ellipse": lambda p: (p / torch.tensor([1.0, 0.55], dtype=p.dtype)).norm(dim=-1).sub(1).mul(0.55),
    "triangle": lambda p: _sd_polygon(p, _regular(3, 1.05)),
    "square": lambda p: _sd_polygon(p, _regular(4, 1.0, np.pi / 4)),
    "pentagon": lambda p: _sd_polygon(p, _regular(5, 1.0)),
    "hexagon": lambda p: _sd_polygon(p, _regular(6, 1.0)),
    "star5": lambda p: _sd_polygon(p, _star(5, 0.42)),
    "cross": lambda p: _sd_polygon(p, [[-.3, -1], [.3, -1], [.3, -.3], [1, -.3], [1, .3], [.3, .3], [.3, 1], [-.3, 1],
                                       [-.3, .3], [-1, .3], [-1, -.3], [-.3, -.3]]),
    "ring": lambda p: _sd_circle(p, r=0.75).abs() - 0.22,
    "crescent": lambda p: torch.maximum(_sd_circle(p, r=0.95), -_sd_circle(p, (0.45, -0.15), 0.8)),
    "semicircle": lambda p: torch.maximum(_sd_circle(p, (0, -0.3), 1.0), p[..., 1] - (-0.3)),
    "rectangle": lambda p: _sd_polygon(p, [[-1, -0.45], [1, -0.45], [1, 0.45], [-1, 0.45]]),
    # only in the targets
    "arrow": lambda p: _sd_polygon(p, [[-1, -0.22], [0.1, -0.22], [0.1, -0.6], [1, 0], [0.1, 0.6], [0.1, 0.22],
                                       [-1, 0.22]]),
    "lshape": lambda p: _sd_polygon(p, [[-0.7, -1], [-0.2, -1], [-0.2, 0.5], [0.7, 0.5], [0.7, 1], [-0.7, 1]]),
    "tshape": lambda p: _sd_polygon(p, [[-0.9, -1], [0.9, -1], [0.9, -0.5], [0.25, -0.5], [0.25, 1], [-0.25, 1],
                                        [-0.25, -0.5], [-0.9, -0.5]]),
    "trapezoid": lambda p: _sd_polygon(p, [[-0.45, -0.6], [0.45, -0.6], [1, 0.6], [-1, 0.6]]),
    "star4": lambda p: _sd_polygon(p, _star(4, 0.35)),
    "star8": lambda p: _sd_polygon(p, _star(8, 0.6)),
    "parallelogram": lambda p: _sd_polygon(p, [[-1, -0.5], [0.4, -0.5], [1, 0.5], [-0.4, 0.5]]),
    "heart": lambda p: torch.minimum(torch.minimum(_sd_circle(p, (-0.42, -0.35), 0.5), _sd_circle(p, (0.42, -0.35), 0.5)),
                                     _sd_polygon(p, [[-0.88, -0.15], [0.88, -0.15], [0, 0.95]])),
}
SOURCE_SHAPES = ("circle", "ellipse", "triangle", "square", "pentagon", "hexagon", "star5", "cross", "ring",
                 "crescent", "semicircle", "rectangle")
NEW_SHAPES = ("arrow", "lshape", "tshape", "trapezoid", "star4", "star8", "parallelogram", "heart")


def shape_masks(names: list[str] | tuple, labels: np.ndarray, rng: np.random.Generator, *, radius=(7.0, 12.0),
                rot=180.0, outline_p=0.3, center=None) -> torch.Tensor:
    """Anti-aliased masks [n,1,32,32] of shapes ``names[labels[i]]`` at random pose; filled or outlined."""
    labels = np.asarray(labels)
    n = len(labels)
    r = rng.uniform(*radius, n)
    ang = np.deg2rad(rng.uniform(-rot, rot, n))
    lim = np.maximum(SIZE / 2 - r - 1, 0)
    if center is None:
        center = rng.uniform(-1, 1, (n, 2)) * lim[:, None]
    outline = rng.random(n) < outline_p
    width = rng.uniform(0.12, 0.22, n)
    pix = _pixel_grid()
    out = torch.zeros(n, SIZE * SIZE, dtype=torch.float64)
    for k, name in enumerate(names):
        idx = np.flatnonzero(labels == k)
        if len(idx) == 0:
            continue
        c, s = np.cos(ang[idx]), np.sin(ang[idx])
        rotm = torch.from_numpy(np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2))  # inverse rotation
        q = (pix.unsqueeze(0) - torch.from_numpy(center[idx]).unsqueeze(1)) @ rotm.transpose(1, 2)
        q = q / torch.from_numpy(r[idx]).view(-1, 1, 1)
        sd = SHAPES[name](q)
        ol = torch.from_numpy(outline[idx]).view(-1, 1)
        sd = torch.where(ol, sd.abs() - torch.from_numpy(width[idx]).view(-1, 1), sd)
        out[torch.from_numpy(idx)] = (0.5 - sd * torch.from_numpy(r[idx]).view(-1, 1)).clamp(0, 1)
    return out.view(n, 1, SIZE, SIZE)


def render_shapes(names, labels, rng, *, clutter=0, photo=None, **kw) -> torch.Tensor:
    x = shape_masks(names, labels, rng, **kw)
    if clutter:
        x = torch.maximum(x, _random_strokes(len(labels), clutter, rng) * 0.8)
    return _finish(_photometric(x, rng, **(photo or {})))


def render_counts(counts: np.ndarray, rng: np.random.Generator, photo=None) -> torch.Tensor:
    """``counts[i]`` small non-overlapping discs/squares per image."""
    n = len(counts)
    out = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.float64)
    for i, cnt in enumerate(counts):
        centers, radii = [], []
        while len(centers) < cnt:
            r = rng.uniform(2.2, 3.8)
            c = rng.uniform(-SIZE / 2 + r + 1, SIZE / 2 - r - 1, 2)
            if all(np.hypot(*(c - c2)) > r + r2 + 1.5 for c2, r2 in zip(centers, radii)):
                centers.append(c)
                radii.append(r)
        kinds = rng.integers(0, 2, cnt)
        m = torch.zeros(SIZE * SIZE, dtype=torch.float64)
        pix = _pixel_grid()
        for c, r, k in zip(centers, radii, kinds):
            q = (pix - torch.from_numpy(c)) / r
            sd = SHAPES["circle"](q) if k == 0 else SHAPES["square"](q * 1.2)
            m = torch.maximum(m, (0.5 - sd * r).clamp(0, 1))
        out[i, 0] = m.view(SIZE, SIZE)
    return _finish(_photometric(out, rng, **(photo or {})))


# ---------------------------------------------------------------------------------------------------------
# textures


def _grating(n, theta_deg, period, rng, jitter_deg=5.0, jitter_period=0.1) -> torch.Tensor:
    pix = _pixel_grid()
    th = np.deg2rad(np.asarray(theta_deg, np.float64) + rng.uniform(-jitter_deg, jitter_deg, n))
    per = np.asarray(period, np.float64) * rng.uniform(1 - jitter_period, 1 + jitter_period, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    d = torch.from_numpy(np.stack([np.cos(th), np.sin(th)], -1) / per[:, None])  # [n,2]
    arg = 2 * np.pi * (pix.unsqueeze(0) * d.unsqueeze(1)).sum(-1) + torch.from_numpy(ph).view(n, 1)
    return torch.sin(arg).view(n, 1, SIZE, SIZE)


def _power_noise(n, beta, rng) -> torch.Tensor:
    """Gaussian noise with power spectrum 1/f^beta (beta per sample), [n,1,32,32]."""
    fy = np.fft.fftfreq(SIZE)[:, None]
    fx = np.fft.fftfreq(SIZE)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    beta = np.broadcast_to(np.asarray(beta, np.float64), (n,))
    amp = f[None] ** (-beta[:, None, None] / 2)
    amp[:, 0, 0] = 0
    spec = (rng.standard_normal((n, SIZE, SIZE)) + 1j * rng.standard_normal((n, SIZE, SIZE))) * amp
    x = np.fft.ifft2(spec).real
    return torch.from_numpy(x).view(n, 1, SIZE, SIZE)


def _normalize(x: torch.Tensor, rng: np.random.Generator, contrast=(0.12, 0.25)) -> torch.Tensor:
    """Per-patch standardization then random contrast/brightness (removes trivial intensity cues)."""
    n = x.shape[0]
    x = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-8)
    c = torch.from_numpy(rng.uniform(*contrast, n)).view(n, 1, 1, 1)
    b = torch.from_numpy(rng.uniform(0.4, 0.6, n)).view(n, 1, 1, 1)
    return b + c * x


def _checker(n, rng) -> torch.Tensor:
    pix = _pixel_grid()
    th = rng.uniform(0, np.pi / 2, n)
    per = rng.uniform(6, 12, n)
    c, s = np.cos(th), np.sin(th)
    u = pix[:, 0].view(1, -1) * torch.from_numpy(c).view(n, 1) + pix[:, 1].view(1, -1) * torch.from_numpy(s).view(n, 1)
    v = -pix[:, 0].view(1, -1) * torch.from_numpy(s).view(n, 1) + pix[:, 1].view(1, -1) * torch.from_numpy(c).view(n, 1)
    off = torch.from_numpy(rng.uniform(0, 1, (n, 2)))
    p = torch.from_numpy(per).view(n, 1)
    x = torch.sin(2 * np.pi * (u / p + off[:, :1])) * torch.sin(2 * np.pi * (v / p + off[:, 1:]))
    return torch.tanh(4 * x).view(n, 1, SIZE, SIZE)


def _dots(n, rng) -> torch.Tensor:
    pix = _pixel_grid()
    out = torch.zeros(n, SIZE * SIZE, dtype=torch.float64)
    for i in range(n):
        k = rng.integers(10, 22)
        c = torch.from_numpy(rng.uniform(-SIZE / 2, SIZE / 2, (k, 2)))
        r = torch.from_numpy(rng.uniform(1.2, 2.5, k))
        d = (pix.unsqueeze(1) - c.unsqueeze(0)).norm(dim=-1) - r
        out[i] = (0.5 - d).clamp(0, 1).max(-1).values
    return out.view(n, 1, SIZE, SIZE)


SOURCE_TEXTURES = ("grating0_low", "grating45_low", "grating90_low", "grating135_low", "grating0_high",
                   "grating45_high", "grating90_high", "grating135_high", "checker", "dots", "brownian", "crosshatch")


def render_textures(labels: np.ndarray, rng: np.random.Generator, noise=(0.0, 0.08)) -> torch.Tensor:
    labels = np.asarray(labels)
    n = len(labels)
    out = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.float64)
    for k, name in enumerate(SOURCE_TEXTURES):
        idx = np.flatnonzero(labels == k)
        m = len(idx)
        if m == 0:
            continue
        if name.startswith("grating"):
            ang, fr = name[7:].split("_")
            x = _grating(m, float(ang), 10.0 if fr == "low" else 4.5, rng)
        elif name == "checker":
            x = _checker(m, rng)
        elif name == "dots":
            x = _dots(m, rng)
        elif name == "brownian":
            x = _power_noise(m, 2.0, rng)
        else:  # crosshatch
            base = rng.uniform(-10, 10, m)
            x = _grating(m, base, 6.0, rng, jitter_deg=0) + _grating(m, base + 90, 6.0, rng, jitter_deg=0)
        out[torch.from_numpy(idx)] = x
    x = _normalize(out, rng)
    sd = torch.from_numpy(rng.uniform(*noise, n)).view(n, 1, 1, 1)
    return _finish(x + sd * torch.from_numpy(rng.standard_normal(x.shape)))


# ---------------------------------------------------------------------------------------------------------
# source domains


def _balanced_labels(n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % c)


def _gen_latin(labels, rng):
    return render_glyphs(LATIN_UPPER + LATIN_LOWER, TRAIN_FONTS, labels, rng)


def _gen_greekcyr(labels, rng):
    return render_glyphs(GREEK_LOWER + CYRILLIC_LOWER, TRAIN_FONTS, labels, rng)


def _gen_pendigits(labels, rng):
    return render_pen_digits(labels, rng)


def _gen_shapes(labels, rng):
    return render_shapes(SOURCE_SHAPES, labels, rng, clutter=1, photo=dict(noise=(0.0, 0.08)))


def _gen_textures(labels, rng):
    return render_textures(labels, rng)


SOURCES = {
    # name: (number of classes, generator(labels, rng) -> images, description)
    "latin": (52, _gen_latin, "Latin letters A-Z a-z, 6 DejaVu faces (Sans/Serif/Mono, regular+bold), random "
                              "affine, stroke width, blur, levels, noise"),
    "greekcyr": (56, _gen_greekcyr, "Greek (24) and Cyrillic (32) lowercase letters, same 6 DejaVu faces and "
                                    "augmentations"),
    "pendigits": (10, _gen_pendigits, "procedural pen-drawn digits 0-9: skeleton strokes, smooth random "
                                      "deformation, slant, rotation, pen width"),
    "shapes": (12, _gen_shapes, "12 geometric shapes (circle ... rectangle), random pose/size, filled or outlined, "
                                "a distractor stroke, noise"),
    "textures": (12, _gen_textures, "12 procedural textures: gratings (4 orientations x 2 frequencies), checker, "
                                    "dots, brownian noise, crosshatch; per-patch normalized"),
}


def make_source(domain: str, n: int, seed: int = 0, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of a source domain with balanced random labels: ``(x [n,1,32,32] float32, y [n] int64)``."""
    if domain not in SOURCES:
        raise KeyError(f"unknown source domain {domain!r}; known: {sorted(SOURCES)}")
    c, gen, _ = SOURCES[domain]
    rng = rng_for("source", domain, split, seed, DATA_VERSION)
    y = _balanced_labels(n, c, rng)
    return gen(y, rng), torch.from_numpy(y).long()


# ---------------------------------------------------------------------------------------------------------
# target tasks


def _t_digits_fonts(y, rng):
    return render_glyphs(DIGITS, HELDOUT_LATIN_FONTS, y, rng)


def _t_latin_heldout(y, rng):
    return render_glyphs(LATIN_UPPER, HELDOUT_LATIN_FONTS, y, rng)


def _t_greek_upper(y, rng):
    return render_glyphs(GREEK_UPPER, HELDOUT_FONTS, y, rng)


def _t_script_id(y, rng):
    scripts = (LATIN_LOWER, GREEK_LOWER, CYRILLIC_LOWER)
    chars = "".join(scripts)
    off = np.cumsum([0] + [len(s) for s in scripts])
    ci = np.array([off[k] + rng.integers(len(scripts[k])) for k in y])
    return render_glyphs(chars, HELDOUT_FONTS, ci, rng)


def _t_font_style(y, rng):
    chars = LATIN_UPPER + LATIN_LOWER
    ci = rng.integers(0, len(chars), len(y))
    return render_glyphs(chars, STIX_STYLES, ci, rng, font_idx=np.asarray(y), warp=dict(rot=5, shear=0.0))


def _t_math_symbols(y, rng):
    return render_glyphs(MATH_SYMBOLS, TRAIN_FONTS + HELDOUT_FONTS, y, rng)


def _t_pendigits_shift(y, rng):
    return render_pen_digits(y, rng, width=(0.1, 0.16), rot=35, wobble=0.09, clutter=2)


def _t_pendigits_inverted(y, rng):
    return render_pen_digits(y, rng, photo=dict(invert=True, noise=(0.05, 0.15)))


def _t_shapes_new(y, rng):
    return render_shapes(NEW_SHAPES, y, rng, photo=dict(noise=(0.0, 0.08)))


def _t_shape_count(y, rng):
    return render_counts(np.asarray(y) + 1, rng)


def _t_texture_orient(y, rng):
    y = np.asarray(y)
    ang = np.array([22.5, 67.5, 112.5, 157.5])[y % 4]
    per = np.where(y < 4, 7.0, 3.4)
    x = _grating(len(y), ang, per, rng, jitter_deg=6)
    bg = _power_noise(len(y), 1.5, rng)
    x = _normalize(0.5 * x + bg / bg.std((1, 2, 3), keepdim=True), rng)
    return _finish(x + torch.from_numpy(rng.uniform(0, 0.08, len(y))).view(-1, 1, 1, 1)
                   * torch.from_numpy(rng.standard_normal(x.shape)))


def _t_texture_noise(y, rng):
    x = _normalize(_power_noise(len(y), np.asarray([0.0, 1.0, 2.0, 3.0, 4.0])[np.asarray(y)], rng), rng)
    return _finish(x)


SHAPES_ON_TEXTURE = ("circle", "triangle", "square", "star5", "cross", "ring")


def _t_shapes_on_texture(y, rng):
    n = len(y)
    m = shape_masks(SHAPES_ON_TEXTURE, y, rng, radius=(9.0, 13.0), outline_p=0.0)
    fill = _grating(n, rng.uniform(0, 180, n), rng.uniform(3.5, 8, n), rng, jitter_deg=0)
    bg = _power_noise(n, 1.5, rng)
    bg = bg / bg.std((1, 2, 3), keepdim=True)
    x = m * (0.62 + 0.3 * fill) + (1 - m) * (0.38 + 0.15 * bg)
    return _finish(x + torch.from_numpy(rng.normal(0, 0.03, x.shape)))


TARGETS = {
    # name: (classes, generator, what it holds out)
    "digits_fonts": (10, _t_digits_fonts, "digits 0-9 typeset in 12 held-out faces (STIX, Computer Modern, "
                                          "DejaVu oblique/italic)"),
    "latin_heldout": (26, _t_latin_heldout, "Latin capitals in the 12 held-out faces"),
    "greek_upper": (24, _t_greek_upper, "Greek capitals (unseen classes) in 9 held-out faces"),
    "script_id": (3, _t_script_id, "which script (Latin / Greek / Cyrillic) a lowercase letter is, held-out faces"),
    "font_style": (4, _t_font_style, "regular / bold / italic / bold-italic STIX letters (style, not identity)"),
    "math_symbols": (16, _t_math_symbols, "16 math symbols (+ − × ÷ = ≠ < > ≤ ≥ ∑ ∫ √ ∞ ∂ ∇), DejaVu + STIX"),
    "pendigits_shift": (10, _t_pendigits_shift, "pen digits with thick pens, ±35° rotation, strong wobble, "
                                                "2 distractor strokes"),
    "pendigits_inverted": (10, _t_pendigits_inverted, "pen digits, dark ink on light background, heavy noise"),
    "shapes_new": (8, _t_shapes_new, "8 unseen shapes (arrow, L, T, trapezoid, 4/8-point stars, parallelogram, "
                                     "heart)"),
    "shape_count": (5, _t_shape_count, "count 1-5 small discs/squares"),
    "texture_orient": (8, _t_texture_orient, "weak gratings at 4 unseen orientations (22.5°+k·45°) × 2 unseen periods, in 1/f^1.5 noise"),
    "texture_noise": (5, _t_texture_noise, "spectral slope of 1/f^β noise, β ∈ {0,1,2,3,4}"),
    "shapes_on_texture": (6, _t_shapes_on_texture, "6 shapes filled with a grating over 1/f noise (composition "
                                                   "of shapes and textures)"),
}


def test_per_class(num_classes: int) -> int:
    return max(TEST_MIN_PER_CLASS, math.ceil(TEST_TOTAL / num_classes))


def make_target(name: str, split: str, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images per class of a target split ("train" or "test").

    Labels cycle 0..C-1, so the first ``k*C`` rows hold exactly ``k`` images per class: the ``shots=k`` train set
    is a prefix of the 50-per-class pool, and the splits are nested.
    """
    if name not in TARGETS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TARGETS)}")
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    c, gen, _ = TARGETS[name]
    rng = rng_for("target", name, split, DATA_VERSION)
    y = np.tile(np.arange(c), per_class)
    return gen(y, rng), torch.from_numpy(y).long()


def fingerprint(x: torch.Tensor) -> str:
    """SHA-256 (first 16 hex digits) of the 8-bit image bytes."""
    return hashlib.sha256((x * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()[:16]
