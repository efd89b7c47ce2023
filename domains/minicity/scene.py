"""Layout of one minicity street scene: a random 3-D street seen through a pinhole camera.

``sample_scene`` draws a resolution-independent scene (metres, world axes X right, Y up, Z
forward; camera at X=0, Y=``camera.height``) from a random generator and a ``LayoutStyle``
(the class priors of a domain). ``rasterize`` projects it at any image size into layers:
a label map in **Cityscapes label ids** (plus the internal id ``LANE`` for lane markings), an
object/instance id map and a "part" map (windows, tyres, glass, ...) that only the renderer
uses for appearance. Drawing is vectorised: every primitive is one ``cv2.fillPoly`` or
``cv2.ellipse`` call (painter's algorithm, far to near), never a per-pixel Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Cityscapes label ids (cityscapesscripts.helpers.labels) the scenes use
EGO, STATIC = 1, 4
ROAD, SIDEWALK, BUILDING, WALL, FENCE = 7, 8, 11, 12, 13
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 31, 32, 33
#: internal id of lane markings: road (7) in GTA5/Cityscapes, ``lanemarking`` (22) in SYNTHIA
LANE = 34
#: classes whose objects are instances (SYNTHIA's G channel holds their instance id)
INSTANCE_CLASSES: frozenset[int] = frozenset({PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE})

# part codes: appearance detail inside one label (the label map never sees them)
BASE, WINDOW, SHADE, TYRE, GLASS, LAMP_RED, LAMP_GREEN, TRUNK, SKIN, TAIL, METAL, SIGN_FACE = range(12)
NUM_PARTS = 12

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate polygons
_PART_BITS = 4
_PARTS = 1 << _PART_BITS  # canvas value = object id * 16 + part code
_ONE = 1 << _SHIFT
Z_NEAR = 0.5  # ground polygons start here (the camera sees the ground from about 4 m on)
Z_FAR = 1000.0


@dataclass(frozen=True)
class LayoutStyle:
    """Class priors of a domain's street scenes (ranges are uniform ``(low, high)``)."""

    name: str
    horizon: tuple[float, float]  # horizon row as a fraction of the image height
    focal: tuple[float, float]  # focal length / image width
    cam_height: tuple[float, float]  # metres
    building_prob: float  # per roadside segment: building
    vegetation_prob: float  # per segment: hedge + trees (rest: park or open gap)
    park_prob: float  # per non-building, non-vegetation segment: grass with trees (else open)
    building_height: tuple[float, float]
    end_facade_prob: float  # buildings closing the street
    skyline_height: tuple[float, float]  # distant backdrop
    skyline_tree_prob: float
    intersection_prob: float
    curb_tree_prob: float  # per side: a row of trees along the curb
    tree_height: tuple[float, float]
    parked_prob: float  # per side: a row of parked cars
    moving_cars: float  # Poisson mean
    big_vehicle_prob: float  # truck or bus in traffic
    train_prob: float  # tram on the road
    persons: float  # Poisson mean
    riders: float  # Poisson mean
    parked_bikes: float  # Poisson mean
    poles_spacing: tuple[float, float]
    wall_prob: float
    fence_prob: float
    verge_prob: float  # grass strip on the sidewalk, per side
    ego_hood: bool  # the camera car's bonnet at the bottom (Cityscapes' "ego vehicle", id 1)


#: GTA5/SYNTHIA-like priors: open streets, low buildings, much sky
SOURCE_LAYOUT = LayoutStyle(
    name="source", horizon=(0.44, 0.54), focal=(0.95, 1.15), cam_height=(1.3, 1.8),
    building_prob=0.3, vegetation_prob=0.12, park_prob=0.6, building_height=(4.0, 12.0),
    end_facade_prob=0.15, skyline_height=(0.0, 10.0), skyline_tree_prob=0.3, intersection_prob=0.5,
    curb_tree_prob=0.3, tree_height=(4.0, 8.0), parked_prob=0.35, moving_cars=2.5, big_vehicle_prob=0.5,
    train_prob=0.04, persons=3.0, riders=1.2, parked_bikes=0.5, poles_spacing=(18.0, 32.0),
    wall_prob=0.2, fence_prob=0.2, verge_prob=0.4, ego_hood=False,
)
#: Cityscapes-like priors: closed street canyons, tall buildings, many trees, little sky
TARGET_LAYOUT = LayoutStyle(
    name="target", horizon=(0.38, 0.46), focal=(1.0, 1.2), cam_height=(1.2, 1.5),
    building_prob=0.6, vegetation_prob=0.3, park_prob=0.7, building_height=(10.0, 24.0),
    end_facade_prob=0.5, skyline_height=(5.0, 30.0), skyline_tree_prob=0.5, intersection_prob=0.35,
    curb_tree_prob=0.6, tree_height=(6.0, 12.0), parked_prob=0.5, moving_cars=2.0, big_vehicle_prob=0.3,
    train_prob=0.04, persons=4.0, riders=1.2, parked_bikes=1.0, poles_spacing=(14.0, 26.0),
    wall_prob=0.3, fence_prob=0.25, verge_prob=0.5, ego_hood=True,
)

#: the layouts by name (``Options.target_layout``)
LAYOUTS: dict[str, LayoutStyle] = {style.name: style for style in (SOURCE_LAYOUT, TARGET_LAYOUT)}


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking along +Z: focal and principal point relative to the image size."""

    focal: float  # f / W
    horizon: float  # principal row / H
    cx: float  # principal column / W
    height: float  # metres above the ground


@dataclass
class Prim:
    """One drawing call: ``polys`` (N, k, 3) world points or an ellipse, with label/object/part."""

    key: tuple
    polys: np.ndarray | None = None
    ellipse: tuple | None = None  # (X, Y, Z, rx, ry, thickness_m or 0 for filled)
    label: int | None = None  # class of ``obj`` (informational; None for detail drawn on an object, e.g. windows)
    obj: int = 0
    part: int = BASE
    screen: bool = False  # polys are (N, k, 2) in fractions of (W, H), no projection


@dataclass
class Scene:
    """A sampled scene: camera, primitives in drawing order, class of every object id."""

    camera: Camera
    prims: list[Prim]
    obj_classes: np.ndarray  # uint8, obj_classes[obj id] = Cityscapes id (0 for id 0)


@dataclass
class Layers:
    """A rasterised scene at one image size."""

    label: np.ndarray  # (H, W) uint8 Cityscapes ids and LANE
    obj: np.ndarray  # (H, W) uint16 object ids (stuff regions have ids too; 0 = background)
    part: np.ndarray  # (H, W) uint8 part codes
    camera: Camera
    obj_classes: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.label.shape

    def instance_ids(self) -> np.ndarray:
        """Instance id map for the instance classes only (0 for stuff), as SYNTHIA's G channel."""
        is_inst = np.zeros(256, dtype=bool)
        is_inst[list(INSTANCE_CLASSES)] = True
        keep = is_inst[self.obj_classes][self.obj]
        return np.where(keep, self.obj, 0).astype(np.uint16)


@dataclass
class _Builder:
    rng: np.random.Generator
    prims: list[Prim] = field(default_factory=list)
    classes: list[int] = field(default_factory=lambda: [0])

    def new(self, label: int) -> int:
        self.classes.append(label)
        return len(self.classes) - 1

    def add(self, key: tuple, polys, label: int | None, obj: int, part: int = BASE) -> None:
        self.prims.append(Prim(key=key, polys=np.asarray(polys, dtype=np.float64), label=label, obj=obj, part=part))

    def ellipse(self, key: tuple, x, y, z, rx, ry, label: int, obj: int, part: int = BASE, thick: float = 0.0):
        self.prims.append(Prim(key=key, ellipse=(x, y, z, rx, ry, thick), label=label, obj=obj, part=part))


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _ground(x0: float, x1: float, z0: float, z1: float) -> list:
    return [[x0, 0.0, z0], [x1, 0.0, z0], [x1, 0.0, z1], [x0, 0.0, z1]]


def _vquad_x(x: float, z0: float, z1: float, y0: float, y1: float) -> list:
    """Vertical quad in the plane X = x (a facade along the street)."""
    return [[x, y0, z0], [x, y0, z1], [x, y1, z1], [x, y1, z0]]


def _vquad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> list:
    """Vertical quad in the plane Z = z (facing the camera)."""
    return [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------

def sample_scene(rng: np.random.Generator, style: LayoutStyle) -> Scene:
    """Draw one street scene with the class priors of ``style``."""
    cam = Camera(focal=_u(rng, style.focal), horizon=_u(rng, style.horizon), cx=float(rng.uniform(0.4, 0.6)),
                 height=_u(rng, style.cam_height))
    b = _Builder(rng)

    # road: lanes around the camera
    lane_w = float(rng.uniform(3.0, 3.6))
    n_lanes = int(rng.integers(1, 5))
    cam_lane = int(rng.integers(0, n_lanes))
    road_l = -(cam_lane + float(rng.uniform(0.35, 0.65))) * lane_w
    road_r = road_l + n_lanes * lane_w
    sw = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(2.0, 5.0)))  # sidewalk widths left, right
    edge = (road_l, road_r)
    outer = (road_l - sw[0], road_r + sw[1])  # facade planes

    z_end = float(rng.uniform(45.0, 180.0)) if rng.random() < style.end_facade_prob else 260.0
    inter = None
    if rng.random() < style.intersection_prob:
        zi = float(rng.uniform(14.0, min(70.0, z_end - 20.0)))
        inter = (zi, zi + float(rng.uniform(8.0, 16.0)))

    def free(z0: float, z1: float) -> bool:
        return inter is None or z1 <= inter[0] or z0 >= inter[1]

    # layer 0: distant skyline
    _skyline(b, style, rng)

    # layer 1: ground (sidewalks, road, intersection, grass verges)
    zs = [(Z_NEAR, Z_FAR)] if inter is None else [(Z_NEAR, inter[0]), (inter[1], Z_FAR)]
    sw_obj = b.new(SIDEWALK)
    for z0, z1 in zs:
        b.add((1, 0), [_ground(outer[0], edge[0], z0, z1), _ground(edge[1], outer[1], z0, z1)], SIDEWALK, sw_obj)
    road_obj = b.new(ROAD)
    b.add((1, 1), [_ground(road_l, road_r, Z_NEAR, Z_FAR)], ROAD, road_obj)
    if inter is not None:
        b.add((1, 1), [_ground(-400.0, 400.0, inter[0], inter[1])], ROAD, road_obj)
    verges = []
    for side in (0, 1):
        if rng.random() < style.verge_prob:
            s = -1.0 if side == 0 else 1.0
            width = min(float(rng.uniform(0.8, 2.0)), sw[side] - 0.8)
            if rng.random() < 0.5:  # tree lawn along the curb
                x_a, x_b = edge[side] + s * width, edge[side]
            else:  # front garden along the facades
                x_a, x_b = outer[side], outer[side] - s * width
            z0 = float(rng.uniform(Z_NEAR, 20.0))
            z1 = z0 + float(rng.uniform(15.0, 80.0))
            obj = b.new(TERRAIN)
            quads = [_ground(min(x_a, x_b), max(x_a, x_b), za, zb)
                     for za, zb in _split_free(z0, z1, inter)]
            if quads:
                b.add((1, 2), quads, TERRAIN, obj)
                verges.append((side, z0, z1))

    # layer 2: lane markings and crosswalks
    lane_obj = b.new(LANE)
    marks = []
    dash, gap = float(rng.uniform(2.0, 4.0)), float(rng.uniform(4.0, 8.0))
    phase = float(rng.uniform(0.0, dash + gap))
    starts = np.arange(Z_NEAR + phase - dash - gap, 300.0, dash + gap)
    for k in range(1, n_lanes):
        xm = road_l + k * lane_w
        for z0 in starts:
            z0c, z1c = max(z0, Z_NEAR), z0 + dash
            if z1c > z0c and free(z0c - 4.5, z1c):
                marks.append(_ground(xm - 0.07, xm + 0.07, z0c, z1c))
    for x0, x1 in ((road_l + 0.25, road_l + 0.4), (road_r - 0.4, road_r - 0.25)):
        if rng.random() < 0.6:
            for za, zb in _split_free(Z_NEAR, 400.0, None if inter is None else (inter[0] - 4.5, inter[1])):
                marks.append(_ground(x0, x1, za, zb))
    if inter is not None:
        for x0 in np.arange(road_l + 0.3, road_r - 0.5, 1.0):
            marks.append(_ground(x0, x0 + 0.5, inter[0] - 4.0, inter[0] - 1.0))
    if marks:
        b.add((2, 0), marks, LANE, lane_obj)

    # layer 3: roadside structures (buildings, hedges, walls, fences, park trees), far to near
    if z_end < 250.0:
        _end_facade(b, style, rng, z_end)
    for side in (0, 1):
        _roadside(b, style, rng, side, outer[side], z_end, inter)

    # layer 4: street furniture and traffic, far to near
    z_obj_max = min(z_end - 4.0, 120.0)
    for side in (0, 1):
        s = -1.0 if side == 0 else 1.0
        curb = edge[side] + s * 0.7  # just inside the sidewalk
        if rng.random() < style.curb_tree_prob:
            z = float(rng.uniform(3.0, 12.0))
            step = float(rng.uniform(8.0, 14.0))
            while z < z_obj_max:
                if free(z - 2, z + 2) and rng.random() < 0.85:
                    _tree(b, style, rng, curb, z, layer=4)
                z += step * float(rng.uniform(0.8, 1.2))
        _poles(b, style, rng, edge[side], s, z_obj_max, inter)
        if rng.random() < style.parked_prob:
            z = float(rng.uniform(3.0, 10.0))
            while z < min(z_obj_max, 90.0):
                if free(z - 1, z + 6):
                    if rng.random() < 0.8:
                        x_c = edge[side] + s * -1.1
                        _vehicle(b, rng, CAR, x_c, z)
                    z += float(rng.uniform(5.0, 6.5))
                else:
                    z = inter[1] + 2.0
        for _ in range(rng.poisson(style.parked_bikes / 2)):
            z = float(rng.uniform(4.0, 40.0))
            if z < z_obj_max and free(z - 1, z + 1):
                x = outer[side] + s * -float(rng.uniform(0.4, 1.0))
                _two_wheeler(b, rng, BICYCLE, x, z, rider=False)
        if rng.random() < 0.3:
            z = float(rng.uniform(5.0, 40.0))
            if z < z_obj_max:
                _static(b, rng, outer[side] + s * -0.5, z)
    lanes_x = [road_l + (k + 0.5) * lane_w for k in range(n_lanes)]
    for _ in range(rng.poisson(style.moving_cars)):
        x = lanes_x[int(rng.integers(0, n_lanes))] + float(rng.normal(0.0, 0.2))
        z = float(rng.uniform(7.0, 100.0))
        if z < z_obj_max and (abs(x) > 1.5 or z > 9.0):
            _vehicle(b, rng, CAR, x, z)
    if rng.random() < style.big_vehicle_prob:
        x = lanes_x[int(rng.integers(0, n_lanes))]
        z = float(rng.uniform(12.0, 70.0))
        if z < z_obj_max:
            _vehicle(b, rng, TRUCK if rng.random() < 0.5 else BUS, x, z)
    if rng.random() < style.train_prob:
        z = float(rng.uniform(15.0, 50.0))
        if z < z_obj_max:
            _vehicle(b, rng, TRAIN, lanes_x[int(rng.integers(0, n_lanes))], z)
    for _ in range(rng.poisson(style.persons)):
        side = int(rng.integers(0, 2))
        s = -1.0 if side == 0 else 1.0
        x = edge[side] + s * float(rng.uniform(0.6, sw[side] - 0.4))
        z = float(rng.uniform(4.0, 50.0))
        if inter is not None and rng.random() < 0.3:  # crossing the street
            x, z = float(rng.uniform(road_l, road_r)), inter[0] - 2.5
        if z < z_obj_max:
            _person(b, rng, x, z)
    for _ in range(rng.poisson(style.riders)):
        side = int(rng.integers(0, 2))
        s = -1.0 if side == 0 else 1.0
        x = edge[side] + s * -float(rng.uniform(0.6, 1.5))
        z = float(rng.uniform(5.0, 45.0))
        if z < z_obj_max:
            _two_wheeler(b, rng, MOTORCYCLE if rng.random() < 0.35 else BICYCLE, x, z, rider=True)

    # layer 5: the camera car's bonnet (screen space)
    if style.ego_hood:
        top = float(rng.uniform(0.86, 0.92))
        xs = np.linspace(0.0, 1.0, 17)
        ys = top + (1.0 - top) * 0.55 * ((xs - 0.5) / 0.5) ** 2
        poly = np.concatenate([np.stack([xs, ys], 1), [[1.0, 1.01], [0.0, 1.01]]])
        b.prims.append(Prim(key=(5, 0), polys=poly[None], label=EGO, obj=b.new(EGO), screen=True))

    order = sorted(range(len(b.prims)), key=lambda i: (b.prims[i].key, i))
    prims = [b.prims[i] for i in order]
    return Scene(camera=cam, prims=prims, obj_classes=np.asarray(b.classes, dtype=np.uint8))


def _split_free(z0: float, z1: float, gap: tuple[float, float] | None) -> list[tuple[float, float]]:
    """[z0, z1] minus the interval ``gap``."""
    if gap is None or z1 <= gap[0] or z0 >= gap[1]:
        return [(z0, z1)] if z1 > z0 else []
    out = []
    if gap[0] > z0:
        out.append((z0, gap[0]))
    if z1 > gap[1]:
        out.append((gap[1], z1))
    return out


def _skyline(b: _Builder, style: LayoutStyle, rng: np.random.Generator) -> None:
    z = 350.0
    x = -700.0
    blds, trees = [], []
    while x < 700.0:
        w = float(rng.uniform(15.0, 60.0))
        h = _u(rng, style.skyline_height)
        if h > 1.0:
            if rng.random() < style.skyline_tree_prob:
                n = 6
                xs = np.linspace(x, x + w, n)
                ys = h * (0.5 + 0.5 * rng.random(n))
                trees.append([[x, 0.0, z]] + [[xi, yi, z] for xi, yi in zip(xs, ys)] + [[x + w, 0.0, z]])
            else:
                blds.append(_vquad_z(z, x, x + w, 0.0, h))
        x += w
    if blds:
        b.add((0, 0), blds, BUILDING, b.new(BUILDING), SHADE)
    for t in trees:  # polygons of different vertex counts: one call each
        b.add((0, 1), [t], VEGETATION, b.new(VEGETATION))


def _windows_x(x: float, z0: float, z1: float, h: float, rng: np.random.Generator) -> np.ndarray:
    """Window quads on a facade in the plane X = x between z0 and z1 (vectorised grid)."""
    floor_h = float(rng.uniform(2.8, 3.6))
    col = float(rng.uniform(2.5, 4.0))
    ww, wh = col * float(rng.uniform(0.35, 0.6)), floor_h * float(rng.uniform(0.35, 0.55))
    ys = np.arange(float(rng.uniform(1.0, 3.0)), h - wh - 0.6, floor_h)
    zs = np.arange(z0 + 0.6, z1 - ww - 0.3, col)
    if len(ys) == 0 or len(zs) == 0:
        return np.zeros((0, 4, 3))
    yy, zz = np.meshgrid(ys, zs, indexing="ij")
    yy, zz = yy.ravel(), zz.ravel()
    xx = np.full_like(yy, x)
    return np.stack([np.stack([xx, yy, zz], 1), np.stack([xx, yy, zz + ww], 1),
                     np.stack([xx, yy + wh, zz + ww], 1), np.stack([xx, yy + wh, zz], 1)], 1)


def _windows_z(z: float, x0: float, x1: float, h: float, rng: np.random.Generator) -> np.ndarray:
    """Window quads on a facade in the plane Z = z between x0 and x1."""
    floor_h = float(rng.uniform(2.8, 3.6))
    col = float(rng.uniform(2.5, 4.0))
    ww, wh = col * float(rng.uniform(0.35, 0.6)), floor_h * float(rng.uniform(0.35, 0.55))
    ys = np.arange(float(rng.uniform(1.0, 3.0)), h - wh - 0.6, floor_h)
    xs = np.arange(x0 + 0.6, x1 - ww - 0.3, col)
    if len(ys) == 0 or len(xs) == 0:
        return np.zeros((0, 4, 3))
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    zz = np.full_like(yy, z)
    return np.stack([np.stack([xx, yy, zz], 1), np.stack([xx + ww, yy, zz], 1),
                     np.stack([xx + ww, yy + wh, zz], 1), np.stack([xx, yy + wh, zz], 1)], 1)


def _end_facade(b: _Builder, style: LayoutStyle, rng: np.random.Generator, z: float) -> None:
    x = -160.0
    while x < 160.0:
        w = float(rng.uniform(12.0, 30.0))
        h = _u(rng, style.building_height) * float(rng.uniform(0.8, 1.3))
        obj = b.new(BUILDING)
        key = (3, -z, 0)
        b.add(key, [_vquad_z(z, x, x + w, 0.0, h)], BUILDING, obj)
        win = _windows_z(z - 0.01, x, x + w, h, rng)
        if len(win):
            b.add(key, win, None, obj, WINDOW)
        x += w


def _roadside(b: _Builder, style: LayoutStyle, rng: np.random.Generator, side: int, xf: float, z_end: float,
              inter: tuple[float, float] | None) -> None:
    """Segments along one side of the street: buildings, hedges, parks, walls and fences."""
    s = -1.0 if side == 0 else 1.0
    z = float(rng.uniform(-8.0, 0.0))
    while z < z_end:
        length = float(rng.uniform(8.0, 35.0))
        z0, z1 = z, min(z + length, z_end)
        z = z1
        if inter is not None and z1 > inter[0] and z0 < inter[1]:
            if z0 < inter[0]:
                z1 = inter[0]
                z = inter[1]
            else:
                z0 = inter[1]
        if z1 - z0 < 2.0:
            continue
        key = (3, -max(z0, 1.0), side)
        r = rng.random()
        if r < style.building_prob:
            h = _u(rng, style.building_height)
            obj = b.new(BUILDING)
            depth = float(rng.uniform(10.0, 25.0))
            # cap facing the camera first (farther out), then the street facade
            b.add(key, [_vquad_z(max(z0, Z_NEAR), xf, xf + s * depth, 0.0, h)], BUILDING, obj, SHADE)
            b.add(key, [_vquad_x(xf, max(z0, Z_NEAR), z1, 0.0, h)], BUILDING, obj)
            win = _windows_x(xf - s * 0.01, max(z0, Z_NEAR), z1, h, rng)
            if len(win):
                b.add(key, win, None, obj, WINDOW)
        elif r < style.building_prob + style.vegetation_prob:
            h = float(rng.uniform(1.0, 3.0))
            # trees behind the hedge first
            zt = z0 + float(rng.uniform(1.0, 6.0))
            while zt < z1:
                _tree(b, style, rng, xf + s * float(rng.uniform(1.0, 4.0)), zt, layer=3, key_z=max(z0, 1.0) + 0.01)
                zt += float(rng.uniform(4.0, 9.0))
            b.add(key, [_vquad_x(xf, max(z0, Z_NEAR), z1, 0.0, h)], VEGETATION, b.new(VEGETATION))
            q = rng.random()
            if q < style.wall_prob + style.fence_prob:  # a low wall or fence in front of the hedge
                cls = WALL if q < style.wall_prob else FENCE
                b.add(key, [_vquad_x(xf - s * 0.05, max(z0, Z_NEAR), z1, 0.0, h * float(rng.uniform(0.3, 0.6)))],
                      cls, b.new(cls))
        else:
            if rng.random() < style.park_prob:
                zt = z0 + float(rng.uniform(2.0, 8.0))
                while zt < z1:
                    _tree(b, style, rng, xf + s * float(rng.uniform(2.0, 15.0)), zt, layer=3,
                          key_z=max(z0, 1.0) + 0.01)
                    zt += float(rng.uniform(5.0, 12.0))
            q = rng.random()
            if q < style.wall_prob:
                h = float(rng.uniform(0.8, 2.5))
                b.add(key, [_vquad_x(xf, max(z0, Z_NEAR), z1, 0.0, h)], WALL, b.new(WALL))
            elif q < style.wall_prob + style.fence_prob:
                h = float(rng.uniform(0.9, 2.0))
                obj = b.new(FENCE)
                b.add(key, [_vquad_x(xf, max(z0, Z_NEAR), z1, 0.0, h)], FENCE, obj)
                posts = np.arange(max(z0, Z_NEAR) + 0.5, z1, float(rng.uniform(1.5, 3.0)))
                if len(posts):
                    b.add(key, [_vquad_x(xf - s * 0.01, p, p + 0.12, 0.0, h + 0.1) for p in posts], FENCE, obj, SHADE)


def _tree(b: _Builder, style: LayoutStyle, rng: np.random.Generator, x: float, z: float, layer: int,
          key_z: float | None = None) -> None:
    h = _u(rng, style.tree_height)
    r = h * float(rng.uniform(0.22, 0.35))
    obj = b.new(VEGETATION)
    key = (layer, -(key_z if key_z is not None else z), 1)
    base = h - 1.6 * r
    b.add(key, [_vquad_z(z, x - 0.15, x + 0.15, 0.0, base + 0.5 * r)], VEGETATION, obj, TRUNK)
    for _ in range(int(rng.integers(2, 4))):
        b.ellipse(key, x + float(rng.normal(0.0, 0.3 * r)), base + r + float(rng.normal(0.0, 0.2 * r)), z,
                  r * float(rng.uniform(0.7, 1.0)), r * float(rng.uniform(0.7, 1.0)), VEGETATION, obj)


def _poles(b: _Builder, style: LayoutStyle, rng: np.random.Generator, edge: float, s: float, z_max: float,
           inter: tuple[float, float] | None) -> None:
    """Street lamps, sign posts and traffic lights along the curb."""
    z = float(rng.uniform(2.0, 10.0))
    if inter is not None and rng.random() < 0.8:  # traffic lights at the intersection
        _traffic_light(b, rng, edge + s * 0.5, inter[0] - 1.0, s)
    while z < z_max:
        x = edge + s * float(rng.uniform(0.3, 0.6))
        if inter is None or not (inter[0] - 2 < z < inter[1] + 2):
            kind = rng.random()
            if kind < 0.35:
                _sign_post(b, rng, x, z)
            elif kind < 0.5:
                _traffic_light(b, rng, x, z, s)
            else:
                _lamp(b, rng, x, z, s)
        z += _u(rng, style.poles_spacing)


def _pole(b: _Builder, x: float, z: float, h: float, width: float, key: tuple) -> None:
    b.add(key, [_vquad_z(z, x - width / 2, x + width / 2, 0.0, h)], POLE, b.new(POLE), METAL)


def _lamp(b: _Builder, rng: np.random.Generator, x: float, z: float, s: float) -> None:
    key = (4, -z, 0)
    h = float(rng.uniform(5.0, 9.0))
    obj = b.new(POLE)
    b.add(key, [_vquad_z(z, x - 0.09, x + 0.09, 0.0, h)], POLE, obj, METAL)
    arm = -s * float(rng.uniform(0.8, 2.0))
    b.add(key, [[[x, h - 0.1, z], [x + arm, h, z], [x + arm, h + 0.1, z], [x, h + 0.05, z]]], POLE, obj, METAL)


def _sign_post(b: _Builder, rng: np.random.Generator, x: float, z: float) -> None:
    key = (4, -z, 0)
    h = float(rng.uniform(2.2, 3.2))
    _pole(b, x, z, h, 0.08, key)
    size = float(rng.uniform(0.5, 0.8))
    obj = b.new(TRAFFIC_SIGN)
    shape = rng.random()
    y = h + size / 2 - 0.1
    if shape < 0.4:
        b.ellipse(key, x, y, z - 0.02, size / 2, size / 2, TRAFFIC_SIGN, obj, SIGN_FACE)
    elif shape < 0.7:
        b.add(key, [[[x - size / 2, y - size * 0.43, z - 0.02], [x + size / 2, y - size * 0.43, z - 0.02],
                     [x, y + size * 0.43, z - 0.02]]], TRAFFIC_SIGN, obj, SIGN_FACE)
    else:
        b.add(key, [_vquad_z(z - 0.02, x - size / 2, x + size / 2, y - size * 0.4, y + size * 0.4)],
              TRAFFIC_SIGN, obj, SIGN_FACE)


def _traffic_light(b: _Builder, rng: np.random.Generator, x: float, z: float, s: float) -> None:
    key = (4, -z, 0)
    h = float(rng.uniform(2.6, 4.0))
    pole = b.new(POLE)
    b.add(key, [_vquad_z(z, x - 0.07, x + 0.07, 0.0, h)], POLE, pole, METAL)
    boxes = [(x, h)]
    if rng.random() < 0.5:  # overhanging arm with a second head over the road
        arm = -s * float(rng.uniform(2.0, 4.0))
        b.add(key, [[[x, h - 0.1, z], [x + arm, h - 0.1, z], [x + arm, h, z], [x, h, z]]], POLE, pole, METAL)
        boxes.append((x + arm, h - 0.1))
    for bx, top in boxes:
        obj = b.new(TRAFFIC_LIGHT)
        w, hh = 0.32, 0.95
        y0 = top - hh if bx != x else top
        b.add(key, [_vquad_z(z - 0.03, bx - w / 2, bx + w / 2, y0, y0 + hh)], TRAFFIC_LIGHT, obj)
        lamp = LAMP_RED if rng.random() < 0.5 else LAMP_GREEN
        ly = y0 + (0.75 if lamp == LAMP_RED else 0.2) * hh
        b.ellipse(key, bx, ly, z - 0.04, 0.09, 0.09, TRAFFIC_LIGHT, obj, lamp)


def _static(b: _Builder, rng: np.random.Generator, x: float, z: float) -> None:
    """A bin or box: Cityscapes 'static' (void, ignored in evaluation)."""
    w, h = float(rng.uniform(0.5, 1.2)), float(rng.uniform(0.6, 1.1))
    b.add((4, -z, 0), [_vquad_z(z, x - w / 2, x + w / 2, 0.0, h)], STATIC, b.new(STATIC))


_VEHICLE_DIMS = {  # width, length, height, body fraction
    CAR: ((1.7, 1.95), (3.9, 4.8), (1.35, 1.6), 0.55),
    TRUCK: ((2.3, 2.5), (6.0, 9.0), (2.8, 3.6), 1.0),
    BUS: ((2.45, 2.55), (10.0, 13.0), (2.9, 3.3), 1.0),
    TRAIN: ((2.4, 2.65), (20.0, 30.0), (3.2, 3.6), 1.0),
}


def _vehicle(b: _Builder, rng: np.random.Generator, label: int, xc: float, z: float) -> None:
    """A box-shaped vehicle seen from behind (or in front) at lateral centre ``xc``, rear at ``z``."""
    (w0, w1), (l0, l1), (h0, h1), body = _VEHICLE_DIMS[label]
    w, length, h = float(rng.uniform(w0, w1)), float(rng.uniform(l0, l1)), float(rng.uniform(h0, h1))
    obj = b.new(label)
    key = (4, -z, 0)
    x0, x1 = xc - w / 2, xc + w / 2
    side_x = x1 if x1 < 0 else (x0 if x0 > 0 else None)
    hb = h * body if label == CAR else h
    polys_side = []
    if side_x is not None:  # the side facing the camera
        b.add(key, [_vquad_x(side_x, z, z + length, 0.25, hb)], label, obj, SHADE)
        if label == CAR:
            inset = 0.6
            b.add(key, [[[side_x, hb, z + inset], [side_x, hb, z + length - 0.6],
                         [side_x, h, z + length - 1.4], [side_x, h, z + inset + 0.5]]], label, obj, GLASS)
        else:
            wins = [_vquad_x(side_x, zz, zz + 1.2, h * 0.55, h * 0.85) for zz in np.arange(z + 1.0, z + length - 1.5, 1.6)]
            if label in (BUS, TRAIN) and wins:
                b.add(key, wins, label, obj, GLASS)
        wr = 0.34 if label == CAR else 0.5
        polys_side += [z + 0.5 + wr, z + length - 0.5 - wr]
    # rear face
    b.add(key, [_vquad_z(z, x0, x1, 0.25, hb)], label, obj)
    if label == CAR:
        cab = 0.15 * w
        b.add(key, [[[x0 + 0.05, hb, z + 0.3], [x1 - 0.05, hb, z + 0.3], [x1 - cab, h, z + 0.9],
                     [x0 + cab, h, z + 0.9]]], label, obj, BASE)
        b.add(key, [[[x0 + 0.15, hb + 0.05, z + 0.35], [x1 - 0.15, hb + 0.05, z + 0.35],
                     [x1 - cab - 0.08, h - 0.06, z + 0.85], [x0 + cab + 0.08, h - 0.06, z + 0.85]]], label, obj, GLASS)
        b.add(key, [_vquad_z(z - 0.01, x0 + 0.08, x0 + 0.35, hb - 0.25, hb - 0.1),
                    _vquad_z(z - 0.01, x1 - 0.35, x1 - 0.08, hb - 0.25, hb - 0.1)], label, obj, TAIL)
    elif label in (BUS, TRAIN):
        b.add(key, [_vquad_z(z - 0.01, x0 + 0.2, x1 - 0.2, h * 0.5, h * 0.9)], label, obj, GLASS)
    # wheels: dark blocks under the rear face, discs on the visible side
    b.add(key, [_vquad_z(z - 0.01, x0 + 0.05, x0 + 0.35, 0.0, 0.3), _vquad_z(z - 0.01, x1 - 0.35, x1 - 0.05, 0.0, 0.3)],
          label, obj, TYRE)
    if polys_side:  # wheels on the side face: 12-gons in the plane X = side_x (foreshortened exactly)
        t = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
        wr = 0.34 if label == CAR else 0.5
        b.add(key, [np.stack([np.full(12, side_x), wr + wr * np.sin(t), zw + wr * np.cos(t)], 1) for zw in polys_side],
              label, obj, TYRE)


def _person(b: _Builder, rng: np.random.Generator, x: float, z: float, label: int = PERSON,
            obj: int | None = None, y0: float = 0.0, h: float | None = None, key_off: float = 0.0) -> None:
    """A standing person facing the camera (or a rider's upper body when ``y0`` > 0)."""
    h = float(rng.uniform(1.55, 1.9)) if h is None else h
    obj = b.new(label) if obj is None else obj
    key = (4, -z + key_off, 0)
    sw = 0.2 * h / 1.75
    if y0 == 0.0:
        stride = float(rng.uniform(0.0, 0.12))
        b.add(key, [[[x - sw * 0.9 - stride, 0.0, z], [x - 0.02 - stride * 0.3, 0.0, z], [x - 0.01, 0.5 * h, z],
                     [x - sw * 0.9, 0.5 * h, z]],
                    [[x + 0.02 + stride * 0.3, 0.0, z], [x + sw * 0.9 + stride, 0.0, z], [x + sw * 0.9, 0.5 * h, z],
                     [x + 0.01, 0.5 * h, z]]], label, obj, SHADE)
        torso_y = 0.48 * h
    else:
        torso_y = y0
    b.add(key, [[[x - sw, torso_y, z], [x + sw, torso_y, z], [x + sw * 1.05, 0.82 * h, z], [x - sw * 1.05, 0.82 * h, z]]],
          label, obj)
    b.add(key, [[[x - sw * 1.05, 0.8 * h, z], [x - sw * 1.4, 0.48 * h, z], [x - sw * 1.05, 0.47 * h, z],
                 [x - sw * 0.8, 0.7 * h, z]],
                [[x + sw * 1.05, 0.8 * h, z], [x + sw * 1.4, 0.48 * h, z], [x + sw * 1.05, 0.47 * h, z],
                 [x + sw * 0.8, 0.7 * h, z]]], label, obj)
    b.ellipse(key, x, 0.9 * h, z, 0.1 * h / 1.75 * 1.1, 0.12 * h / 1.75 * 1.1, label, obj, SKIN)


def _two_wheeler(b: _Builder, rng: np.random.Generator, label: int, x: float, z: float, rider: bool) -> None:
    """A bicycle or motorcycle in side view, with a rider on it when ``rider``."""
    obj = b.new(label)
    key = (4, -z, 0)
    r = 0.34 if label == BICYCLE else 0.32
    wheelbase = 1.05 if label == BICYCLE else 1.4
    d = 1.0 if rng.random() < 0.5 else -1.0  # facing left or right
    xa, xb = x - d * wheelbase / 2, x + d * wheelbase / 2
    thick = 0.06 if label == BICYCLE else 0.13
    b.ellipse(key, xa, r, z, r, r, label, obj, TYRE, thick=thick)
    b.ellipse(key, xb, r, z, r, r, label, obj, TYRE, thick=thick)
    seat = (x - d * 0.15, r + 0.55)
    bar = (xb - d * 0.1, r + 0.6)
    if label == BICYCLE:
        t = 0.04
        frame = [
            [[xa, r - t, z], [seat[0], seat[1] - t, z], [seat[0], seat[1] + t, z], [xa, r + t, z]],
            [[xa, r - t, z], [x + d * 0.1, r - t, z], [x + d * 0.1, r + t, z], [xa, r + t, z]],
            [[x + d * 0.1, r - t, z], [seat[0], seat[1], z], [seat[0] + 2 * t, seat[1], z], [x + d * 0.1 + 2 * t, r, z]],
            [[seat[0], seat[1] - t, z], [bar[0], bar[1] - t, z], [bar[0], bar[1] + t, z], [seat[0], seat[1] + t, z]],
            [[xb, r - t, z], [bar[0], bar[1] - t, z], [bar[0] + 2 * t, bar[1], z], [xb + 2 * t, r, z]],
        ]
        b.add(key, frame, label, obj, METAL)
    else:
        body = [[xa + d * 0.2, r + 0.05, z], [xb - d * 0.15, r + 0.1, z], [bar[0], bar[1] + 0.1, z],
                [seat[0] + d * 0.1, r + 0.62, z], [xa - d * 0.1, r + 0.5, z]]
        b.add(key, [body], label, obj)
    if rider:
        h = float(rng.uniform(1.6, 1.85))
        robj = b.new(RIDER)
        rk = 0.001
        # leg to the pedal, then the upper body from the seat
        b.add((4, -z + rk, 0), [[[seat[0] - 0.08, seat[1], z], [seat[0] + 0.08, seat[1], z],
                                 [x + d * 0.15, r * 0.7, z], [x, r * 0.7, z]]], RIDER, robj, SHADE)
        _person(b, rng, seat[0] + d * 0.08, z, label=RIDER, obj=robj, y0=seat[1], h=seat[1] + 0.5 * h * 1.05,
                key_off=rk)


# --------------------------------------------------------------------------------------------
# rasterisation
# --------------------------------------------------------------------------------------------

def rasterize(scene: Scene, width: int, height: int) -> Layers:
    """Project and draw ``scene`` at ``width`` x ``height`` (painter's algorithm).

    Every primitive is one cv2 call on a single int32 canvas holding ``obj * 16 + part``; the
    label map is the class of each pixel's object. All polygon vertices are projected at once.
    """
    cam = scene.camera
    f = cam.focal * width
    cx, cy = cam.cx * width, cam.horizon * height
    classes = scene.obj_classes
    sky_obj, ground_obj = len(classes), len(classes) + 1  # background objects
    classes = np.concatenate([classes, np.array([SKY, TERRAIN], dtype=np.uint8)])
    canvas = np.full((height, width), ground_obj * _PARTS, dtype=np.int32)
    canvas[: max(0, int(np.ceil(cy)))] = sky_obj * _PARTS

    world = [p.polys.reshape(-1, 3) for p in scene.prims if p.polys is not None and not p.screen]
    world_xy = iter(())
    if world:
        w3 = np.concatenate(world)
        k = f / np.maximum(w3[:, 2], 1e-3)
        xy = np.stack([cx + k * w3[:, 0], cy - k * (w3[:, 1] - cam.height)], -1)
        xy = np.clip(np.round(xy * _ONE), -(1 << 26), 1 << 26).astype(np.int32)
        world_xy = iter(np.split(xy, np.cumsum([len(a) for a in world])[:-1]))
    for p in scene.prims:
        code = int(p.obj) * _PARTS + int(p.part)
        if p.ellipse is not None:
            X, Y, Z, rx, ry, thick = p.ellipse
            if Z < Z_NEAR:
                continue
            k = f / Z
            centre = (int(round((cx + k * X) * _ONE)), int(round((cy - k * (Y - cam.height)) * _ONE)))
            axes = (max(int(round(k * rx * _ONE)), 1), max(int(round(k * ry * _ONE)), 1))
            t = -1 if thick <= 0 else max(1, int(round(k * thick)))
            cv2.ellipse(canvas, centre, axes, 0, 0, 360, code, t, cv2.LINE_8, _SHIFT)
        elif p.screen:
            xy = np.round(p.polys * np.array([width, height]) * _ONE).astype(np.int32)
            cv2.fillPoly(canvas, xy, code, cv2.LINE_8, _SHIFT)
        else:
            xy = next(world_xy).reshape(p.polys.shape[:-1] + (2,))
            cv2.fillPoly(canvas, xy, code, cv2.LINE_8, _SHIFT)
    obj = canvas >> _PART_BITS
    part = (canvas & (_PARTS - 1)).astype(np.uint8)
    return Layers(label=classes[obj], obj=obj.astype(np.uint16), part=part, camera=cam, obj_classes=classes)
