"""Body regions other than the hip, for images a hip model must not assess: a PA chest, an AP
knee, a PA hand, an AP shoulder, a lateral lumbar spine and a lateral skull, drawn with the
same 3D primitives and physics as the hip scenes."""

from __future__ import annotations

import numpy as np

from hiprouter.synth.alt.pelvis import add_bone, plate
from hiprouter.synth.alt.raycast import (
    Camera,
    Layers,
    Solid,
    capsule_chain,
    ellipsoid,
    frustum,
    rotation,
    solid,
    unit,
)


def _tube(points: np.ndarray, radii: list[float], cortex: float, ratio: float = 1.0,
          hint: np.ndarray | None = None, smooth: bool = True) -> list:
    r = np.asarray(radii, float)
    return [(capsule_chain(points, r, ratio=ratio, hint=hint, smooth=smooth),
             capsule_chain(points, np.maximum(r - cortex, 0.3), ratio=ratio, hint=hint,
                           smooth=smooth))]


def camera(source_side: float, fov: tuple[float, float], long_side: int, center: np.ndarray,
           sid: float = 1100.0, depth: float = 150.0) -> Camera:
    """A vertical-beam camera looking along y (source at y = source_side * sid)."""
    aspect = fov[1] / fov[0]
    shape = ((long_side, max(16, int(long_side / aspect))) if aspect > 1
             else (max(16, int(long_side * aspect)), long_side))
    d = np.array([0, -np.sign(source_side), 0.0])
    det = center + d * depth
    mag = sid / (sid - depth)
    return Camera(det - d * sid, det, np.array([1.0, 0, 0]), np.array([0, 0, -1.0]),
                  fov[0] * mag / shape[1], shape)


def draw_chest(layers: Layers, rng: np.random.Generator, female: bool) -> None:
    """Thorax: lungs, heart, ribs, clavicles, scapulae, spine, diaphragm, vessels."""
    s = rng.uniform(0.92, 1.08)
    a, b = 150 * s, 105 * s
    x = np.array([1.0, 0, 0])
    trunk = solid(frustum(np.array([0, 0, -250.0]), np.array([0, 0, 260.0]), a, a * 0.9,
                          ratio=b / a, hint=x))
    layers.add("tissue", trunk)
    layers.add("fat", solid(frustum(np.array([0, 0, 220.0]), np.array([0, 0, 330.0]), 60, 55)))
    lungs = []
    for lat in (-1.0, 1.0):
        c = np.array([lat * 62 * s, 5.0, 40 * s])
        lungs.append(ellipsoid(c, np.eye(3), (52 * s, 80 * s, 130 * s)).clip(
            np.array([0, 0, -1.0]), c - np.array([0, 0, 95 * s + lat * 8])))
    layers.add("gas", solid(*lungs), 0.75)
    heart = ellipsoid(np.array([18 * s, -25.0, -45 * s]), rotation((0, 1, 0), -35),
                      (62 * s, 55 * s, 48 * s))
    layers.add("gas", solid(heart), -0.75)
    layers.add("gas", solid(frustum(np.array([0, -20.0, 20.0]), np.array([0, -5.0, 200.0]),
                                    9, 8)), 0.9)  # trachea
    for k in range(int(rng.integers(40, 70))):  # pulmonary vessels branching from the hila
        lat = -1.0 if k % 2 else 1.0
        start = np.array([lat * 35 * s, 0, 10 * s]) + rng.normal(0, 8, 3)
        d = unit(np.array([lat * rng.uniform(0.3, 1), rng.normal(0, 0.3), rng.normal(0, 0.8)]))
        length = rng.uniform(30, 110) * s
        pts = np.array([start, start + d * length * 0.5 + rng.normal(0, 6, 3),
                        start + d * length])
        vessel = capsule_chain(pts, [rng.uniform(2.5, 5), 1.8, 0.6], smooth=True)
        layers.add("tissue", vessel, 1.0)
        layers.add("gas", vessel, -0.75)
    for k in range(12):  # ribs: posterior arcs descending anteriorly
        z0 = (165 - 25 * k) * s
        for lat in (-1.0, 1.0):
            th = np.linspace(0.05, 0.72 * np.pi, 9)
            ar, br = (55 + 95 * np.sin(np.pi * min(k + 2, 10) / 12)) * s, b * 0.93
            pts = np.column_stack([lat * ar * np.sin(th) + lat * 20 * s * (th < 0.3),
                                   br * np.cos(th), z0 - 55 * s * (1 - np.cos(th)) * 0.9])
            add_bone(layers, _tube(pts, [4.8 * s] * 9, 1.0 * s, ratio=0.55, hint=x), 0.25)
    for lat in (-1.0, 1.0):
        pts = np.array([(lat * 25, -70, 200), (lat * 70, -75, 212), (lat * 120, -45, 212),
                        (lat * 160, -10, 225)]) * s
        add_bone(layers, _tube(pts, [9 * s, 7 * s, 6 * s, 8 * s], 2.0 * s), 0.3)
        outline = np.array([(0, 0), (95, 10), (20, 150), (0, 160), (-10, 80)], float) * s
        scap = plate(outline, np.array([lat * 55 * s, 80 * s, 210 * s]),
                     np.array([lat * 0.9, 0.44, 0.0]), np.array([0, 0, -1.0]), base=3.0,
                     rim=5.0, cortex=1.0, bvtv=0.25)
        layers.add_sheet(scap)
    for k in range(14):  # thoracic and first lumbar vertebrae
        c = np.array([0, 55 * s, (200 - 27 * k) * s])
        w, d, h = (15 + 1.2 * k) * s, (13 + 0.8 * k) * s, (9 + 0.5 * k) * s
        up = np.array([0, 0, 1.0])
        add_bone(layers, [(frustum(c - up * h, c + up * h, w, w, ratio=d / w, hint=x),
                           frustum(c - up * (h - 1), c + up * (h - 1), w - 1, w - 1,
                                   ratio=(d - 1) / (w - 1), hint=x))], 0.28)
        add_bone(layers, _tube(np.array([c + np.array([0, d + 10, 0]),
                                         c + np.array([0, d + 35, -20 * s])]), [5, 4], 1.2), 0.3)
    if female:
        for lat in (-1.0, 1.0):
            layers.add("fat", solid(ellipsoid(np.array([lat * 80 * s, -b - 20, -40 * s]),
                                              np.eye(3), (65 * s, 50 * s, 60 * s))))


def draw_knee(layers: Layers, rng: np.random.Generator) -> None:
    """AP knee: distal femur with condyles, patella, tibial plateau and shaft, fibula."""
    s = rng.uniform(0.9, 1.1)
    leg = capsule_chain(np.array([[0, 0, -250.0], [0, 0, 250.0]]), [55 * s, 65 * s])
    core = leg.offset(-8 * s)
    layers.add("tissue", core)
    layers.add("fat", leg)
    layers.add("fat", core, -1.0)
    femur = [(frustum(np.array([0, 0, 250.0]), np.array([0, 0, 40 * s]), 14 * s, 30 * s),
              frustum(np.array([0, 0, 250.0]), np.array([0, 0, 40 * s]), 8 * s, 28 * s))]
    for lat in (-1.0, 1.0):
        e = ellipsoid(np.array([lat * 20 * s, 8 * s, 12 * s]), np.eye(3),
                      (19 * s, 30 * s, 28 * s))
        femur.append((e, e.offset(-1.2)))
    add_bone(layers, femur, 0.3)
    pat = ellipsoid(np.array([3 * s, -45 * s, 40 * s]), np.eye(3), (22 * s, 10 * s, 25 * s))
    add_bone(layers, [(pat, pat.offset(-1.2))], 0.3)
    gap = rng.uniform(4, 7) * s
    top = -16 * s - gap
    tib = [(frustum(np.array([0, 5, top]), np.array([0, 5, top - 45 * s]), 38 * s, 22 * s,
                    ratio=0.75, hint=np.array([1.0, 0, 0])),
            frustum(np.array([0, 5, top - 1.2]), np.array([0, 5, top - 45 * s]), 36.5 * s,
                    20 * s, ratio=0.75, hint=np.array([1.0, 0, 0]))),
           (frustum(np.array([0, 5, top - 40 * s]), np.array([0, 5, -260.0]), 20 * s, 15 * s),
            frustum(np.array([0, 5, top - 40 * s]), np.array([0, 5, -260.0]), 16 * s, 9 * s))]
    add_bone(layers, tib, 0.3)
    fib = np.array([[34 * s, 20 * s, top - 15 * s], [30 * s, 18 * s, -260.0]])
    add_bone(layers, _tube(fib, [9 * s, 7 * s], 2.0 * s, smooth=False), 0.3)


def draw_hand(layers: Layers, rng: np.random.Generator) -> None:
    """PA hand: radius and ulna, carpus, metacarpals, phalanges with joint spaces."""
    s = rng.uniform(0.85, 1.1)
    spread = rng.uniform(0.6, 1.3)
    palm = solid(ellipsoid(np.array([0, 0, 20 * s]), np.eye(3), (45 * s, 15 * s, 55 * s)),
                 capsule_chain(np.array([[0, 0, -30 * s], [0, 0, -150.0]]), [32 * s, 35 * s]))
    layers.add("tissue", palm)
    for lat, zoff in ((-1.0, 0.0), (1.0, 2.0)):  # radius (thumb side) and ulna
        x = (15 if lat < 0 else -18) * s
        add_bone(layers, _tube(np.array([[x, 0, -25 * s + zoff], [x, 0, -150.0]]),
                               [12 * s if lat < 0 else 8 * s, 9 * s], 2.2 * s, smooth=False),
                 0.28)
    carp = []
    for k in range(8):
        c = np.array([(-24 + 14 * (k % 4)) * s, 0, (-8 + 14 * (k // 4)) * s])
        e = ellipsoid(c + rng.normal(0, 1, 3), np.eye(3), (6.5 * s, 6 * s, 6 * s))
        carp.append((e, e.offset(-0.8)))
    for pair in carp:
        add_bone(layers, [pair], 0.28)
    fingers = [(-40, 0.9, 2), (-17, 1.0, 3), (0, 1.08, 3), (16, 1.0, 3), (30, 0.85, 3)]
    for k, (x0, length, n_ph) in enumerate(fingers):
        ang = np.radians((k - 2) * 9 * spread + (-35 if k == 0 else 0))
        d = np.array([np.sin(ang), 0, np.cos(ang)])
        base = np.array([x0 * s, 0, 22 * s]) + (np.array([-12 * s, 0, -8 * s]) if k == 0
                                               else 0)
        seg = [62 * length * s if k else 42 * s] + [q * length * s for q in (38, 24, 18)]
        cur = base
        for j in range(n_ph + 1):
            end = cur + d * seg[j]
            r = (4.8 - 0.8 * j) * s
            add_bone(layers, _tube(np.array([cur, end]), [r * 1.3, r], 1.1 * s, smooth=False),
                     0.25)
            layers.add("tissue", solid(capsule_chain(np.array([cur, end]),
                                                     [r + 5 * s, r + 4 * s])))
            cur = end + d * 2.0 * s


def draw_shoulder(layers: Layers, rng: np.random.Generator) -> None:
    """AP shoulder (right, patient's left on the image's right): humeral head in the glenoid,
    acromion, clavicle, scapula, upper ribs and lung. A ball in a socket, like a hip."""
    s = rng.uniform(0.9, 1.1)
    abduct = rng.uniform(-10, 25)
    x = np.array([1.0, 0, 0])
    chest = solid(frustum(np.array([-120.0, 0, -220]), np.array([-120.0, 0, 120]), 150 * s,
                          140 * s, ratio=0.7, hint=x))
    arm_dir = unit(np.array([np.sin(np.radians(abduct)), 0, -np.cos(np.radians(abduct))]))
    head_c = np.array([20 * s, 5.0, 0.0])
    arm = capsule_chain(np.array([head_c, head_c + arm_dir * 260]), [55 * s, 45 * s])
    layers.add("tissue", solid(chest, arm, ellipsoid(np.array([0, 0, 40.0]), np.eye(3),
                                                     (70 * s, 60 * s, 45 * s))))
    lung = ellipsoid(np.array([-110 * s, 5.0, -30.0]), np.eye(3), (60 * s, 55 * s, 120 * s))
    layers.add("gas", solid(lung), 0.75)
    head = ellipsoid(head_c, np.eye(3), (24 * s, 24 * s, 25 * s))
    shaft = _tube(np.array([head_c + arm_dir * 10, head_c + arm_dir * 60 + x * 6,
                            head_c + arm_dir * 250]), [19 * s, 13 * s, 11 * s], 3.0 * s)
    add_bone(layers, [(head, head.offset(-1.3))] + shaft, 0.3)
    glen = ellipsoid(np.array([-12 * s, 8.0, 0.0]), np.eye(3), (7 * s, 14 * s, 20 * s))
    add_bone(layers, [(glen, glen.offset(-1.5))], 0.35)
    outline = np.array([(0, 0), (30, 15), (110, 40), (95, 160), (40, 120), (5, 40)], float) * s
    layers.add_sheet(plate(outline, np.array([-18 * s, 25.0, 20 * s]), np.array([-0.95, 0.3, 0]),
                           np.array([0, 0, -1.0]), base=3.0, rim=5.0, cortex=1.0, bvtv=0.25))
    acro = np.array([(-60, 40, 55), (-15, 25, 48), (15, 10, 40), (30, 0, 33)]) * s
    add_bone(layers, _tube(acro, [8 * s, 9 * s, 8 * s, 6 * s], 1.8 * s, ratio=0.5, hint=x), 0.3)
    clav = np.array([(-200, -30, 30), (-120, -25, 48), (-50, -10, 50), (-5, 0, 45)]) * s
    add_bone(layers, _tube(clav, [9 * s, 8 * s, 7 * s, 9 * s], 2.0 * s), 0.3)
    cor = np.array([(-25, -25, 10), (-15, -20, 25)]) * s  # coracoid
    add_bone(layers, _tube(cor, [6 * s, 5 * s], 1.5 * s), 0.3)
    for k in range(6):
        z0 = (40 - 32 * k) * s
        th = np.linspace(0.0, 0.6 * np.pi, 8)
        pts = np.column_stack([-230 * s + 170 * s * np.sin(th), 60 * s * np.cos(th),
                               z0 - 45 * s * (1 - np.cos(th))])
        add_bone(layers, _tube(pts, [4.5 * s] * 8, 1.0 * s, ratio=0.55, hint=x), 0.25)


def draw_lumbar_spine_lateral(layers: Layers, rng: np.random.Generator) -> None:
    """Lateral lumbar spine, drawn in the image plane: five vertebral bodies (anterior to the
    right) with discs, pedicles and spinous processes, the top of the sacrum, lower ribs and
    bowel gas; the trunk is traversed side to side."""
    s = rng.uniform(0.9, 1.1)
    lordosis = rng.uniform(0.0, 0.25)
    x = np.array([1.0, 0, 0])
    trunk = frustum(np.array([0, 0, -260.0]), np.array([0, 0, 260.0]), 130 * s, 125 * s,
                    ratio=1.6, hint=x)
    layers.add("tissue", solid(trunk))
    layers.add("fat", solid(trunk), 0.25)
    for _ in range(int(rng.integers(4, 12))):  # bowel gas anterior to the spine
        c = np.array([rng.uniform(40, 110) * s, rng.normal(0, 40), rng.uniform(-200, 120)])
        layers.add("gas", solid(ellipsoid(c, np.eye(3), tuple(rng.uniform(8, 25, 3)))), 0.8)
    z = 170 * s
    for k in range(5):
        h = (24 + 1.5 * k) * s
        zc = z - h / 2
        shift = lordosis * 120 * np.sin(np.pi * (k + 0.5) / 5) * s
        c = np.array([shift, 0, zc])
        w, d = (17 + 0.8 * k) * s, (24 + 1.5 * k) * s  # x: antero-posterior, y: transverse
        up = np.array([0, 0, 1.0])
        body = frustum(c - up * h / 2, c + up * h / 2, w, w, ratio=d / w, hint=x)
        core = frustum(c - up * (h / 2 - 1.5), c + up * (h / 2 - 1.5), w - 1.5, w - 1.5,
                       ratio=(d - 1.5) / (w - 1.5), hint=x)
        add_bone(layers, [(body, core)], 0.3)
        back = c - x * (w + 8 * s)
        add_bone(layers, _tube(np.array([back + x * 10, back - x * 25 * s]), [7 * s, 6 * s],
                               1.5 * s), 0.3)  # pedicle and lamina
        add_bone(layers, _tube(np.array([back - x * 25 * s, back - x * 50 * s - up * 8 * s]),
                               [8 * s, 6 * s], 1.5 * s, ratio=0.4,
                               hint=np.array([0, 1.0, 0])), 0.3)  # spinous process
        z -= h + rng.uniform(7, 11) * s  # disc
    sac = np.array([(lordosis * 20 * s, 0, z - 5), (-25 * s, 0, z - 110 * s)])
    add_bone(layers, _tube(sac, [28 * s, 14 * s], 2.0 * s, ratio=1.5, hint=x), 0.22)
    for k in range(2):  # lowest ribs crossing the top of the field
        th = np.linspace(0.2, 1.2, 7)
        pts = np.column_stack([-40 * s + 120 * s * np.sin(th), np.zeros(7),
                               (230 - 35 * k) * s - 70 * s * (1 - np.cos(th))])
        add_bone(layers, _tube(pts, [5 * s] * 7, 1.0 * s), 0.25)


def draw_skull_lateral(layers: Layers, rng: np.random.Generator) -> None:
    """Lateral skull with the face and teeth (face to the right): vault, skull base,
    maxilla and mandible with two rows of teeth, sinuses, upper cervical spine."""
    s = rng.uniform(0.9, 1.08)
    x = np.array([1.0, 0, 0])
    head = ellipsoid(np.array([0, 0, 30.0]), np.eye(3), (100 * s, 75 * s, 95 * s))
    layers.add("tissue", solid(head, ellipsoid(np.array([55 * s, 0, -60 * s]), np.eye(3),
                                              (55 * s, 50 * s, 60 * s))))
    vault = ellipsoid(np.array([-5 * s, 0, 45 * s]), np.eye(3), (92 * s, 70 * s, 80 * s))
    layers.add_shell(Solid((vault,)), Solid((vault.offset(-7 * s),)), "cortical", None,
                     0.8)  # the vault is a shell around the brain
    base = np.array([(-60, 0, -10), (0, 0, -5), (55, 0, 0)]) * s
    add_bone(layers, _tube(base, [9 * s, 7 * s, 6 * s], 2.5 * s), 0.4)
    petrous = ellipsoid(np.array([-35 * s, 0, -15 * s]), np.eye(3), (22 * s, 30 * s, 12 * s))
    add_bone(layers, [(petrous, petrous.offset(-3 * s))], 0.6)
    layers.add("gas", solid(ellipsoid(np.array([70 * s, 0, -25 * s]), np.eye(3),
                                      (18 * s, 25 * s, 15 * s))), 0.9)  # maxillary sinus
    layers.add("gas", solid(ellipsoid(np.array([80 * s, 0, 40 * s]), np.eye(3),
                                      (10 * s, 15 * s, 12 * s))), 0.9)  # frontal sinus
    gap = rng.uniform(0, 12) * s  # mouth slightly open or closed
    maxilla = np.array([(40, 0, -50), (90, 0, -55)]) * s
    add_bone(layers, _tube(maxilla, [10 * s, 8 * s], 2.0 * s, ratio=1.5, hint=x), 0.3)
    mand = np.array([(-5, 0, -20), (5, 0, -80), (30, 0, -110), (90, 0, -105)]) * s
    mand[:, 2] -= gap
    add_bone(layers, _tube(mand, [7 * s, 8 * s, 9 * s, 9 * s], 2.5 * s, ratio=1.3,
                           hint=x), 0.3)
    for zt in (-65 * s, -75 * s - gap):  # upper and lower row
        for k in range(int(rng.integers(6, 9))):
            c = np.array([(42 + 7.0 * k) * s, rng.normal(0, 3), zt])
            r = (4.5 if k < 4 else 3.5) * s
            tooth = ellipsoid(c, np.eye(3), (r, 22 * s, 9 * s))
            layers.add("cortical", solid(tooth), 1.3)  # enamel: denser than cortex
    for k in range(4):  # C1-C4
        c = np.array([-25 * s, 0, (-45 - 28 * k) * s])
        up = np.array([0, 0, 1.0])
        add_bone(layers, [(frustum(c - up * 9 * s, c + up * 9 * s, 9 * s, 9 * s,
                                   ratio=1.6, hint=x),
                           frustum(c - up * 8 * s, c + up * 8 * s, 8 * s, 8 * s,
                                   ratio=1.6, hint=x))], 0.25)
