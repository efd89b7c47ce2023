"""Appearance of minicity images per domain: the source/target appearance gap.

A rasterised scene (``scene.Layers``) is coloured by a domain's ``Appearance``:

* ``GTA5`` and ``SYNTHIA`` (synthetic sources) are flat and saturated: one colour per object,
  hard edges, a clean sky gradient, no texture and no sensor noise (two different palettes).
* ``CITYSCAPES`` (the "real" target) has a desaturated, cooler palette and image formation
  effects: facade stains, foliage and grass noise, asphalt grain, paving-tile lines, distance
  haze, a lighting gradient with vignetting, a slight Gaussian blur and sensor noise.

Per-class colours differ between the domains (e.g. saturated green vegetation vs dark olive
foliage), so a segmenter trained on the source does clearly worse on the target, while every
class keeps a distinctive colour and shape inside each domain. All steps are whole-image
numpy/cv2 operations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from domains.minicity import scene as S

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Appearance:
    """Colours and image-formation effects of one domain."""

    name: str
    base: dict[int, RGB]  # label id -> RGB
    objects: dict[int, tuple[RGB, ...]]  # label id -> colours drawn per object (cars, clothes, ...)
    parts: dict[int, RGB]  # part code -> RGB (replaces the object colour)
    sky: tuple[RGB, RGB]  # top, horizon
    shade: float = 0.72  # multiplier of SHADE parts
    gain_jitter: float = 0.05  # per-image brightness std
    class_jitter: float = 6.0  # per-image, per-class colour offset std
    object_jitter: float = 0.06  # per-object brightness std
    textured: bool = False
    texture: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # label -> fine, mid, low amp
    foliage_hue: float = 0.0  # yellow/green hue noise amplitude on vegetation and terrain
    tiles: float = 0.0  # darkening of paving-tile joints on the sidewalk
    haze: tuple[float, float] = (0.0, 0.2)  # strength, length scale (fraction of width)
    haze_colour: RGB = (0, 0, 0)
    light_gradient: float = 0.0  # max relative brightness change across the image
    vignette: float = 0.0
    blur_sigma: float = 0.0  # pixels at 256 px width (scaled with the image width)
    noise_sigma: float = 0.0  # per-channel sensor noise (8-bit levels)
    gamma: float = 1.0


GTA5 = Appearance(
    name="gta5",
    base={S.ROAD: (112, 96, 118), S.LANE: (238, 222, 120), S.SIDEWALK: (182, 164, 140), S.BUILDING: (186, 146, 108),
          S.WALL: (168, 112, 84), S.FENCE: (150, 104, 50), S.POLE: (128, 128, 138), S.TRAFFIC_LIGHT: (44, 44, 16),
          S.TRAFFIC_SIGN: (235, 190, 20), S.VEGETATION: (60, 152, 44), S.TERRAIN: (170, 160, 70),
          S.SKY: (80, 160, 250), S.PERSON: (210, 60, 60), S.RIDER: (220, 80, 200), S.CAR: (200, 30, 30),
          S.TRUCK: (225, 222, 205), S.BUS: (40, 120, 210), S.TRAIN: (190, 40, 40), S.MOTORCYCLE: (40, 40, 50),
          S.BICYCLE: (20, 170, 210), S.EGO: (20, 20, 20), S.STATIC: (90, 140, 90), 0: (0, 0, 0)},
    objects={S.CAR: ((205, 30, 30), (30, 60, 205), (235, 205, 30), (235, 235, 235), (30, 30, 30), (30, 170, 70)),
             S.PERSON: ((210, 50, 50), (50, 80, 210), (240, 170, 30), (60, 170, 60), (240, 240, 240)),
             S.RIDER: ((230, 90, 200), (250, 120, 20), (60, 200, 220)),
             S.TRAFFIC_SIGN: ((235, 190, 20), (220, 30, 30), (30, 80, 220)),
             S.BUS: ((40, 120, 210), (220, 200, 40)), S.TRUCK: ((225, 222, 205), (210, 120, 40))},
    parts={S.WINDOW: (90, 150, 200), S.TYRE: (24, 24, 24), S.GLASS: (60, 90, 120), S.LAMP_RED: (255, 40, 30),
           S.LAMP_GREEN: (40, 255, 80), S.TRUNK: (120, 80, 40), S.SKIN: (235, 185, 140), S.TAIL: (255, 40, 40),
           S.METAL: (128, 128, 138), S.SIGN_FACE: (0, 0, 0)},
    sky=((60, 130, 245), (150, 205, 255)),
)

SYNTHIA = Appearance(
    name="synthia",
    base={S.ROAD: (104, 88, 140), S.LANE: (240, 240, 240), S.SIDEWALK: (168, 162, 150), S.BUILDING: (184, 172, 204),
          S.WALL: (150, 150, 120), S.FENCE: (120, 90, 70), S.POLE: (90, 90, 110), S.TRAFFIC_LIGHT: (30, 30, 40),
          S.TRAFFIC_SIGN: (230, 40, 40), S.VEGETATION: (40, 150, 90), S.TERRAIN: (140, 160, 60),
          S.SKY: (120, 190, 240), S.PERSON: (220, 120, 60), S.RIDER: (240, 60, 120), S.CAR: (40, 70, 200),
          S.TRUCK: (200, 200, 210), S.BUS: (230, 180, 40), S.TRAIN: (160, 60, 160), S.MOTORCYCLE: (30, 30, 30),
          S.BICYCLE: (230, 120, 30), S.EGO: (20, 20, 20), S.STATIC: (120, 100, 80), 0: (0, 0, 0)},
    objects={S.CAR: ((40, 70, 200), (200, 40, 40), (230, 230, 230), (40, 40, 40), (240, 200, 40)),
             S.PERSON: ((220, 120, 60), (60, 60, 200), (40, 160, 160), (200, 200, 60)),
             S.RIDER: ((240, 60, 120), (120, 60, 240)),
             S.TRAFFIC_SIGN: ((230, 40, 40), (40, 90, 230), (240, 240, 240))},
    parts={S.WINDOW: (120, 200, 230), S.TYRE: (20, 20, 20), S.GLASS: (80, 120, 160), S.LAMP_RED: (255, 30, 30),
           S.LAMP_GREEN: (30, 255, 120), S.TRUNK: (100, 70, 50), S.SKIN: (240, 200, 160), S.TAIL: (255, 20, 20),
           S.METAL: (90, 90, 110), S.SIGN_FACE: (0, 0, 0)},
    sky=((100, 170, 240), (190, 225, 250)),
)

CITYSCAPES = Appearance(
    name="cityscapes",
    base={S.ROAD: (74, 78, 80), S.LANE: (176, 178, 172), S.SIDEWALK: (124, 118, 112), S.BUILDING: (118, 110, 98),
          S.WALL: (136, 130, 118), S.FENCE: (96, 92, 78), S.POLE: (92, 94, 90), S.TRAFFIC_LIGHT: (28, 30, 30),
          S.TRAFFIC_SIGN: (40, 78, 150), S.VEGETATION: (64, 82, 40), S.TERRAIN: (108, 114, 72),
          S.SKY: (196, 204, 212), S.PERSON: (60, 58, 64), S.RIDER: (70, 60, 56), S.CAR: (88, 92, 98),
          S.TRUCK: (150, 150, 146), S.BUS: (156, 152, 120), S.TRAIN: (150, 120, 100), S.MOTORCYCLE: (40, 40, 44),
          S.BICYCLE: (50, 48, 46), S.EGO: (28, 30, 34), S.STATIC: (70, 72, 60), 0: (0, 0, 0)},
    objects={S.CAR: ((88, 92, 98), (150, 152, 156), (34, 36, 40), (185, 188, 190), (52, 58, 84), (110, 40, 40)),
             S.PERSON: ((40, 40, 46), (90, 84, 78), (60, 70, 96), (120, 100, 80)),
             S.RIDER: ((50, 52, 60), (110, 90, 70)),
             S.TRAFFIC_SIGN: ((40, 78, 150), (160, 40, 40), (200, 200, 190)),
             S.BUS: ((156, 152, 120), (180, 184, 180)), S.TRUCK: ((150, 150, 146), (120, 110, 90))},
    parts={S.WINDOW: (42, 46, 52), S.TYRE: (22, 22, 24), S.GLASS: (36, 42, 48), S.LAMP_RED: (220, 60, 50),
           S.LAMP_GREEN: (70, 210, 150), S.TRUNK: (66, 56, 44), S.SKIN: (170, 140, 118), S.TAIL: (150, 30, 30),
           S.METAL: (92, 94, 90), S.SIGN_FACE: (0, 0, 0)},
    sky=((176, 188, 204), (214, 218, 220)),
    shade=0.8, gain_jitter=0.08, class_jitter=4.0, object_jitter=0.1, textured=True,
    texture={S.ROAD: (9.0, 4.0, 6.0), S.LANE: (8.0, 3.0, 4.0), S.SIDEWALK: (6.0, 4.0, 6.0), S.BUILDING: (5.0, 6.0, 10.0),
             S.WALL: (6.0, 6.0, 8.0), S.FENCE: (6.0, 5.0, 4.0), S.VEGETATION: (10.0, 22.0, 10.0),
             S.TERRAIN: (9.0, 14.0, 10.0), S.SKY: (1.0, 2.0, 5.0), S.POLE: (3.0, 2.0, 2.0)},
    foliage_hue=10.0, tiles=0.75, haze=(0.45, 0.08), haze_colour=(190, 196, 202), light_gradient=0.25,
    vignette=0.35, blur_sigma=0.7, noise_sigma=4.0, gamma=1.1,
)

APPEARANCES: dict[str, Appearance] = {a.name: a for a in (GTA5, SYNTHIA, CITYSCAPES)}


def blend(source: Appearance, target: Appearance, gap: float) -> Appearance:
    """``target``'s appearance moved towards ``source``'s: ``gap`` 1 is ``target`` itself, 0 renders
    with ``source``'s colours and image formation (the layouts, i.e. the class priors, still
    differ). Colours and effect strengths are interpolated linearly; texture and foliage-hue
    amplitudes scale with ``gap`` (the source is untextured). It sizes minicity's domain gap
    (``python -m domains.minicity --appearance-gap``)."""
    if not 0.0 <= gap <= 1.0:
        raise ValueError(f"minicity appearance gap must lie in [0, 1], got {gap}")
    if gap == 1.0:
        return target

    def mix(a: float, b: float) -> float:
        return (1.0 - gap) * a + gap * b

    def rgb(a: RGB, b: RGB) -> RGB:
        return tuple(int(round(mix(x, y))) for x, y in zip(a, b))  # type: ignore[return-value]

    def table(a: dict[int, RGB], b: dict[int, RGB]) -> dict[int, RGB]:
        return {k: rgb(a.get(k, v), v) for k, v in b.items()}

    objects = {k: tuple(rgb(source.objects.get(k, (source.base.get(k, c),))[i % len(source.objects.get(k, (c,)))], c)
                        for i, c in enumerate(colours))
               for k, colours in target.objects.items()}
    return Appearance(
        name=f"{target.name}_gap{gap:g}", base=table(source.base, target.base), objects=objects,
        parts=table(source.parts, target.parts), sky=(rgb(source.sky[0], target.sky[0]), rgb(source.sky[1], target.sky[1])),
        shade=mix(source.shade, target.shade), gain_jitter=mix(source.gain_jitter, target.gain_jitter),
        class_jitter=mix(source.class_jitter, target.class_jitter),
        object_jitter=mix(source.object_jitter, target.object_jitter), textured=target.textured,
        texture={k: tuple(gap * a for a in amps) for k, amps in target.texture.items()},  # type: ignore[misc]
        foliage_hue=gap * target.foliage_hue, tiles=mix(source.tiles, target.tiles),
        haze=(mix(source.haze[0], target.haze[0]), target.haze[1]), haze_colour=rgb(source.haze_colour, target.haze_colour),
        light_gradient=mix(source.light_gradient, target.light_gradient), vignette=mix(source.vignette, target.vignette),
        blur_sigma=mix(source.blur_sigma, target.blur_sigma), noise_sigma=mix(source.noise_sigma, target.noise_sigma),
        gamma=mix(source.gamma, target.gamma),
    )


def _lut(table: dict[int, RGB], size: int) -> np.ndarray:
    lut = np.zeros((size, 3), dtype=np.float32)
    for k, v in table.items():
        lut[k] = v
    return lut


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise with unit-ish std and a feature size of ``cell`` pixels (bicubic upsampling)."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 2), max(2, int(np.ceil(w / cell)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC)
    return big[:h, :w] if big.shape[0] >= h and big.shape[1] >= w else cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def render(layers: S.Layers, app: Appearance, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 image (H, W, 3) of ``layers`` in the appearance ``app``."""
    label, obj, part = layers.label, layers.obj, layers.part
    h, w = label.shape
    scale = w / 256.0

    # colours: per class with a per-image jitter, per object (cars, clothes, building tones)
    base = _lut(app.base, 256)
    base += rng.normal(0.0, app.class_jitter, base.shape).astype(np.float32)
    base *= np.float32(1.0 + rng.normal(0.0, app.gain_jitter))
    classes = layers.obj_classes
    obj_col = base[classes].copy()
    for cls, choices in app.objects.items():
        idx = np.flatnonzero(classes == cls)
        if len(idx):
            pick = np.asarray(choices, dtype=np.float32)[rng.integers(0, len(choices), len(idx))]
            obj_col[idx] = pick + rng.normal(0.0, app.class_jitter, pick.shape).astype(np.float32)
    obj_col *= (1.0 + rng.normal(0.0, app.object_jitter, (len(classes), 1))).astype(np.float32)
    img = np.where((obj > 0)[..., None], obj_col[obj], base[label])

    # sky gradient (top -> horizon)
    sky = label == S.SKY
    if sky.any():
        horizon = max(layers.camera.horizon * h, 1.0)
        t = np.clip(np.arange(h, dtype=np.float32) / horizon, 0.0, 1.0) ** 0.7
        top, bottom = np.asarray(app.sky[0], np.float32), np.asarray(app.sky[1], np.float32)
        grad = top[None] * (1 - t[:, None]) + bottom[None] * t[:, None]
        grad = grad + rng.normal(0.0, app.class_jitter, 3).astype(np.float32)
        img = np.where(sky[..., None], np.broadcast_to(grad[:, None, :], img.shape), img)

    # parts: replacement colours and shading
    pcol = _lut(app.parts, S.NUM_PARTS)
    replace = np.zeros(S.NUM_PARTS, dtype=bool)
    replace[[k for k in app.parts if k not in (S.METAL, S.SIGN_FACE)]] = True
    rep = replace[part]
    img = np.where(rep[..., None], pcol[part], img)
    mult = np.ones(S.NUM_PARTS, dtype=np.float32)
    mult[S.SHADE] = app.shade
    mult[S.SIGN_FACE] = 1.0
    img *= mult[part][..., None]

    if app.textured:
        img = _image_formation(img, layers, app, rng, scale)
    else:
        np.clip(img, 0, 255, out=img)
    return (img + 0.5).astype(np.uint8)


def _image_formation(img: np.ndarray, layers: S.Layers, app: Appearance, rng: np.random.Generator,
                     scale: float) -> np.ndarray:
    """Textures, haze, lighting, blur and noise of a 'real' camera image."""
    label = layers.label
    h, w = label.shape
    amp = np.zeros((256, 3), dtype=np.float32)
    for k, v in app.texture.items():
        amp[k] = v
    a = amp[label]
    fine = rng.standard_normal((h, w)).astype(np.float32)
    mid = _value_noise(rng, h, w, 2.5 * scale)
    low = _value_noise(rng, h, w, 14.0 * scale)
    lum = a[..., 0] * fine + a[..., 1] * mid + a[..., 2] * low
    # windows: some lit, some reflecting the sky
    lum += np.where(layers.part == S.WINDOW, 18.0 * _value_noise(rng, h, w, 3.0 * scale), 0.0)
    img = img + lum[..., None]
    if app.foliage_hue:
        green = (label == S.VEGETATION) | (label == S.TERRAIN)
        hue = _value_noise(rng, h, w, 4.0 * scale) * app.foliage_hue
        img += np.where(green[..., None], hue[..., None] * np.array([1.0, 0.6, -0.6], np.float32), 0.0)

    cam = layers.camera
    f, cx, cy = cam.focal * w, cam.cx * w, cam.horizon * h
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    if app.tiles:
        # paving-tile joints on the sidewalk from ground-plane coordinates
        dy = np.maximum(ys - cy, 0.5)
        zg = f * cam.height / dy
        xg = (xs - cx) * zg / f
        tile = 0.6
        footprint = tile * f / zg  # tile size in pixels
        joint = ((np.mod(xg, tile) < 0.05) | (np.mod(zg, tile) < 0.05)) & (footprint > 5.0)
        img *= np.where((joint & (label == S.SIDEWALK))[..., None], np.float32(app.tiles), np.float32(1.0))

    # haze towards the vanishing point (distance proxy: pixel distance to it)
    strength, length = app.haze
    if strength:
        r = np.hypot(xs - cx, ys - cy) / w
        wgt = strength * np.exp(-r / length)
        wgt = np.where(label == S.SKY, 0.0, wgt)[..., None]
        img = img * (1 - wgt) + np.asarray(app.haze_colour, np.float32) * wgt

    # lighting gradient and vignetting
    gx, gy = rng.uniform(-app.light_gradient, app.light_gradient, 2)
    gain = 1.0 + gx * (xs / w - 0.5) + gy * (ys / h - 0.5)
    rr = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
    gain *= 1.0 - app.vignette * 0.5 * rr
    img *= gain[..., None].astype(np.float32)

    np.clip(img, 0, 255, out=img)
    if app.gamma != 1.0:
        img = 255.0 * (img / 255.0) ** np.float32(1.0 / app.gamma)
    if app.blur_sigma:
        img = cv2.GaussianBlur(img, (0, 0), app.blur_sigma * max(scale, 1.0) ** 0.5)
    img += rng.normal(0.0, app.noise_sigma, img.shape).astype(np.float32)
    img += rng.normal(0.0, app.noise_sigma * 0.5, (h, w, 1)).astype(np.float32)
    np.clip(img, 0, 255, out=img)
    return img
