"""Synthetic data set: 64x64 flat-colour shapes with regular captions (numpy only)."""
import numpy as np

IMAGE = 64
COLORS = {
    "red": [220, 40, 40],
    "green": [40, 170, 60],
    "blue": [40, 80, 220],
    "yellow": [240, 220, 40],
    "orange": [245, 140, 20],
    "purple": [150, 60, 200],
    "white": [245, 245, 245],
    "black": [20, 20, 20],
}
COLOR_NAMES = list(COLORS)
SHAPES = ["circle", "square", "triangle"]
# size word ("" = default) -> half extent in pixels
SIZES = {"small": 11, "": 15, "large": 19}
# position words ("" = center) -> centre (x, y) in pixels
POSITIONS = {
    "": (32, 32),
    "at the top left": (20, 20),
    "at the top right": (44, 20),
    "at the bottom left": (20, 44),
    "at the bottom right": (44, 44),
}
# (shape, colour, background) never shown in training
HELD_OUT = [
    ("circle", "orange", "green"),
    ("square", "purple", "yellow"),
    ("triangle", "white", "red"),
    ("circle", "black", "white"),
    ("square", "green", "blue"),
    ("triangle", "yellow", "purple"),
]
EXTRA_WORDS = ["in", "of", "and", "with", "picture", "photo", "shape", "big", "tiny", "center", "middle"]


def caption(shape, color, bg, size="", pos=""):
    words = ["a"]
    if size:
        words.append(size)
    words += [color, shape]
    if pos:
        words.append(pos)
    words += ["on", "a", bg, "background"]
    return " ".join(words)


def all_words():
    ws = set(["a", "on", "background"])
    ws.update(COLOR_NAMES)
    ws.update(SHAPES)
    for s in SIZES:
        ws.update(s.split())
    for p in POSITIONS:
        ws.update(p.split())
    ws.update(EXTRA_WORDS)
    return sorted(ws)


def shape_mask(shape, cx, cy, r, ss=4):
    """Coverage in [0,1] of a shape (ss x ss supersampled)."""
    n = IMAGE * ss
    c = (np.arange(n) + 0.5) / ss
    x, y = np.meshgrid(c, c)
    if shape == "circle":
        m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        s = r * 0.88
        m = (np.abs(x - cx) <= s) & (np.abs(y - cy) <= s)
    else:  # triangle: apex up, base down, width 2r, height 2r
        top, bot = cy - r, cy + r
        t = (y - top) / (2 * r)
        m = (y >= top) & (y <= bot) & (np.abs(x - cx) <= t * r)
    return m.reshape(IMAGE, ss, IMAGE, ss).mean(axis=(1, 3))


def outline_mask(shape, cx, cy, r, width=4.0):
    inner = shape_mask(shape, cx, cy, max(r - width * (2.0 if shape == "triangle" else 1.0), 1.0))
    return np.clip(shape_mask(shape, cx, cy, r) - inner, 0.0, 1.0)


def pastel(rgb):
    return [int(round(0.45 * v + 0.55 * 255)) for v in rgb]


def render(shape, color, bg, size, pos, rng, style="base"):
    r = SIZES[size] + rng.uniform(-1.0, 1.0)
    cx, cy = POSITIONS[pos]
    cx += rng.uniform(-2.0, 2.0)
    cy += rng.uniform(-2.0, 2.0)
    fg = np.array(COLORS[color], np.float32)
    bgc = np.array(COLORS[bg], np.float32)
    if style == "pastel":
        fg = np.array(pastel(COLORS[color]), np.float32)
        bgc = np.array(pastel(COLORS[bg]), np.float32)
    img = np.broadcast_to(bgc, (IMAGE, IMAGE, 3)).copy()
    if style == "stripes":
        # horizontal bands 8 px tall: background colour alternating with a 50%-darker shade
        dark = bgc * 0.5 if bgc.mean() > 60 else bgc + 100.0
        rows = (np.arange(IMAGE) // 8) % 2 == 1
        img[rows] = dark
    m = outline_mask(shape, cx, cy, r) if style == "outline" else shape_mask(shape, cx, cy, r)
    img = img * (1 - m[..., None]) + fg * m[..., None]
    return img.astype(np.uint8)


def sample_spec(rng, allow_held_out=False):
    while True:
        shape = SHAPES[rng.integers(3)]
        color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        bg = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
        if bg == color:
            continue
        if not allow_held_out and (shape, color, bg) in HELD_OUT:
            continue
        size = list(SIZES)[rng.integers(len(SIZES))]
        pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
        return shape, color, bg, size, pos


def make_dataset(n, seed, style="base"):
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, IMAGE, IMAGE, 3), np.uint8)
    caps = []
    for i in range(n):
        spec = sample_spec(rng)
        imgs[i] = render(*spec, rng=rng, style=style)
        caps.append(caption(*spec))
    return imgs, caps


def palette_json():
    return {
        "image_size": IMAGE,
        "colors": COLORS,
        "shapes": SHAPES,
        "sizes": {("default" if k == "" else k): v for k, v in SIZES.items()},
        "positions": {("center" if k == "" else k): list(v) for k, v in POSITIONS.items()},
        "caption_grammar": "a [small|large] <color> <shape> [at the (top|bottom) (left|right)] on a <color> background",
        "held_out": [{"shape": s, "color": c, "background": b} for s, c, b in HELD_OUT],
        "styles": {
            "outline": "shape drawn as a 4 px outline in its colour, interior shows the background",
            "pastel": "every colour c -> round(0.45*c + 0.55*255)",
            "stripes": "background in horizontal 8 px bands alternating the colour and a 50% darker shade",
        },
    }
