"""Rendering FaceWorld faces from their attributes. Face coordinates: origin at the face centre, unit = image
side, y down."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .config import _AU, _SKIN_TONES, AU_NAMES, FaceWorldConfig
from .features import _face_rows
from .sampling import sample_faceworld_attributes

# Colours (RGB).
_HAIR_RGB = {
    "black": (28, 24, 24), "brown": (96, 60, 34), "blonde": (222, 188, 118),
    "red": (170, 72, 34), "grey": (150, 150, 148), "white": (228, 228, 222),
}  # fmt: skip
_EYE_RGB = {
    "brown": (92, 56, 30), "blue": (60, 116, 184), "green": (62, 132, 78),
    "grey": (118, 128, 140), "hazel": (140, 108, 56),
}  # fmt: skip
_FRAME_RGB = ((20, 20, 20), (90, 55, 30), (200, 165, 70), (150, 30, 40))
_MOUTH_INSIDE = (70, 18, 24)
_TEETH = (238, 234, 224)
_CIRCLE_24 = np.exp(2j * np.pi * np.arange(24) / 24)
_CIRCLE_12 = np.exp(2j * np.pi * np.arange(12) / 12)
_UNIT_GRIDS = {n: np.linspace(-1.0, 1.0, n) for n in (5, 7, 9, 13)}


class _FaceCanvas:
    """Draws polygons and strokes given in face coordinates onto a canvas of side `size` (the image is
    drawn at twice its resolution and box-downsampled), after the face's scale, rotation and shift."""

    def __init__(self, image: Image.Image, size: int, centre: complex, scale: float, rotation_degrees: float):
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.size = size
        self.centre = centre * size
        self.transform = scale * size * np.exp(1j * math.radians(rotation_degrees))
        self.pixels_per_unit = scale * size

    def _points(self, points: np.ndarray) -> list[tuple[float, float]]:
        z = self.centre + self.transform * points  # complex: x + iy
        return list(zip(z.real.tolist(), z.imag.tolist()))

    def polygon(self, points: np.ndarray, fill: tuple[int, ...]) -> None:
        self.draw.polygon(self._points(points), fill=fill)

    def ellipse(self, centre: complex, rx: float, ry: float, fill: tuple[int, ...], circle=_CIRCLE_24) -> None:
        self.polygon(centre + (circle if rx == ry else circle.real + 1j * (ry / rx) * circle.imag) * rx, fill)

    def stroke(self, points: np.ndarray, fill: tuple[int, ...], width: float) -> None:
        pixel_width = max(1, round(width * self.pixels_per_unit))
        self.draw.line(self._points(points), fill=fill, width=pixel_width, joint="curve")


def _byte(value: float) -> int:
    return min(255, max(0, int(value + 0.5)))


def _rgb(colour: np.ndarray | Sequence[float], alpha: float | None = None) -> tuple[int, ...]:
    """An RGB(A) fill tuple; an alpha below 255 blends the fill over what is drawn."""
    r, g, b = (float(c) for c in colour)
    return (_byte(r), _byte(g), _byte(b)) if alpha is None else (_byte(r), _byte(g), _byte(b), _byte(alpha))


def _parabola(half_width: float, y_corner: float, y_centre: float, n: int = 9) -> np.ndarray:
    """Points of y = y_corner + (y_centre - y_corner) * (1 - (x / half_width)^2), left to right."""
    u = _UNIT_GRIDS[n]
    return half_width * u + 1j * (y_corner + (y_centre - y_corner) * (1 - u * u))


@dataclass
class _Palette:
    skin: np.ndarray
    shadow: tuple[int, ...]
    crease: np.ndarray  # a dark skin colour for wrinkles (RGB, alpha added per cue)
    hair: tuple[int, ...]
    brow: tuple[int, ...]
    lips: tuple[int, ...]
    iris: tuple[int, ...]


def _make_palette(face: Mapping, rng: np.random.Generator) -> _Palette:
    skin = _SKIN_TONES[int(face["skin_tone"])] + rng.uniform(-8, 8, 3)
    if face["age_group"] == "elderly":
        skin = 0.85 * skin + 0.15 * skin.mean()
    hair = np.array(_HAIR_RGB[str(face["hair_colour"])], dtype=np.float32) + rng.uniform(-10, 10, 3)
    brow = np.minimum(hair * 0.6, skin * 0.45)
    lip_red = 0.55 if face["gender"] == "woman" else 0.3
    lips = (1 - lip_red) * skin * 0.8 + lip_red * np.array((190.0, 70.0, 85.0))
    return _Palette(
        skin=skin, shadow=_rgb(skin * 0.78), crease=skin * 0.45, hair=_rgb(hair), brow=_rgb(brow),
        lips=_rgb(lips), iris=_rgb(_EYE_RGB[str(face["eye_colour"])]),
    )  # fmt: skip


def _draw_hair_back(canvas: _FaceCanvas, face: Mapping, palette: _Palette, width: float, height: float) -> None:
    style = face["hair_style"]
    if style == "bald":
        return
    if style == "long":
        canvas.polygon(
            np.array([-width - 0.06 - 0.1j, width + 0.06 - 0.1j, width + 0.09 + 0.6j, -width - 0.09 + 0.6j]),
            palette.hair,
        )
    if style == "bun":
        canvas.ellipse(-height - 0.06j, 0.12, 0.09, palette.hair)
    canvas.ellipse(-0.05j, width + 0.035, height + 0.01, palette.hair)
    if style == "curly":
        for z in _CIRCLE_12[6:]:  # upper half of the head
            canvas.ellipse(-0.05j + complex((width + 0.03) * z.real, (height + 0.0) * z.imag), 0.06, 0.06,
                           palette.hair, _CIRCLE_12)  # fmt: skip


def _draw_head(
    canvas: _FaceCanvas, palette: _Palette, width: float, height: float, jaw: float, chin_drop: float
) -> None:
    """Neck, shirt, ears and the face; the face below the centre line is `chin_drop` longer (AU26)."""
    canvas.polygon(np.array([-0.1 + 0.2j, 0.1 + 0.2j, 0.12 + 0.6j, -0.12 + 0.6j]), palette.shadow)  # neck
    canvas.ellipse(0.58j, 0.42, 0.12, _rgb(palette.skin[::-1] * 0.5 + 40))  # shirt
    for side in (-1, 1):
        canvas.ellipse(complex(side * width, -0.02), 0.04, 0.07, _rgb(palette.skin * 0.92))  # ears
    narrowing = 1 - (1 - jaw) * np.maximum(_CIRCLE_24.imag, 0)  # narrower jaw below the centre line
    heights = np.where(_CIRCLE_24.imag > 0, height + chin_drop, height)
    canvas.polygon(width * _CIRCLE_24.real * narrowing + 1j * heights * _CIRCLE_24.imag, _rgb(palette.skin))


def _draw_fringe(canvas: _FaceCanvas, face: Mapping, palette: _Palette, width: float, height: float, hairline: float):
    """Hair over the top of the forehead, above `hairline` (fraction of the face height above the centre)."""
    if face["hair_style"] == "bald":
        return
    angles = np.linspace(math.asin(hairline), math.pi - math.asin(hairline), 12)
    top = width * np.cos(angles) - 1j * height * np.sin(angles)  # right -> left along the top of the face
    canvas.polygon(np.concatenate([top, [top[-1], top[0]]]), palette.hair)


def _draw_beard(canvas: _FaceCanvas, face: Mapping, palette: _Palette, width: float, height: float, jaw: float,
                rng: np.random.Generator) -> None:  # fmt: skip
    if not face["beard"]:
        return
    angles = np.linspace(0.15, math.pi - 0.15, 12)
    lower = width * np.cos(angles) * (1 - (1 - jaw) * np.sin(angles)) + 1j * height * np.sin(angles)
    alpha = 150 if rng.random() < 0.5 else 230  # stubble or full beard
    canvas.polygon(np.concatenate([lower, [-0.1 + 0.12j, 0.1 + 0.12j]]), (*palette.hair, alpha))


def _draw_brows(canvas: _FaceCanvas, face: Mapping, palette: _Palette, eye_y: float, au: np.ndarray) -> None:
    """AU1 raises the inner ends, AU2 the outer ends, AU4 lowers and knits them and adds furrows."""
    au1, au2, au4 = au[_AU["AU1"]], au[_AU["AU2"]], au[_AU["AU4"]]
    width = 0.05 if face["gender"] == "man" else 0.04
    y = eye_y - 0.105
    inner_x = 0.055 - 0.005 * au4
    inner_y = y + 0.005 - 0.015 * au1 + 0.011 * au4
    middle_y = y - 0.012 - 0.006 * au1 - 0.008 * au2 + 0.007 * au4
    outer_y = y + 0.008 - 0.015 * au2 + 0.003 * au4
    for side in (-1, 1):
        brow = np.array(
            [complex(side * inner_x, inner_y), complex(side * 0.12, middle_y), complex(side * 0.195, outer_y)]
        )
        canvas.stroke(brow, palette.brow, width)
    if au4 > 0.05:
        for side in (-1, 1):
            furrow = np.array([complex(side * 0.018, y - 0.01), complex(side * 0.022, y + 0.05)])
            canvas.stroke(furrow, _rgb(palette.crease, 45 * au4), 0.016)


def _draw_eyes(canvas: _FaceCanvas, face: Mapping, palette: _Palette, eye_y: float, au: np.ndarray) -> None:
    """AU5 opens the upper lids (white above the iris); AU6 pushes the lower lids up, raises the cheek
    contour and blush and draws crow's feet."""
    au5, au6 = au[_AU["AU5"]], au[_AU["AU6"]]
    young = face["age_group"] == "young"
    half_width = 0.065 * (1.08 if young else 1.0)
    iris_radius = 0.03 * (1.1 if young else 1.0)
    upper = 0.028 + 0.011 * au5
    lower = max(0.006, 0.024 - 0.0036 * au6)
    for side in (-1, 1):
        centre = complex(side * 0.14, eye_y)
        upper_lid = centre + _parabola(half_width, 0.0, -upper)
        lower_lid = centre + _parabola(half_width, 0.0, lower)
        if au6 > 0.05:  # raised cheek: blush and contour under the eye, crow's feet
            canvas.ellipse(centre + complex(side * 0.03, 0.13 - 0.01 * au6), 0.065, 0.045,
                           _rgb((225, 95, 95), 20 * au6))  # fmt: skip
            canvas.stroke(centre + _parabola(0.055, 0.055 - 0.006 * au6, 0.075 - 0.008 * au6, 5),
                          _rgb(palette.crease, 45 * au6), 0.016)  # fmt: skip
            for dy in (-0.015, 0.015):
                corner = centre + side * (half_width + 0.012)
                canvas.stroke(np.array([corner, corner + complex(side * 0.03, 1.6 * dy)]),
                              _rgb(palette.crease, 40 * au6), 0.012)  # fmt: skip
        canvas.polygon(np.concatenate([upper_lid, lower_lid[::-1]]), (250, 250, 248))
        canvas.ellipse(centre, iris_radius, iris_radius, palette.iris, _CIRCLE_12)
        canvas.ellipse(centre, iris_radius * 0.45, iris_radius * 0.45, (15, 12, 12), _CIRCLE_12)
        upper_cap = max(upper, iris_radius) + 0.012
        lower_cap = max(lower, iris_radius) + 0.012
        skin = _rgb(palette.skin)
        canvas.polygon(
            np.concatenate([upper_lid, [centre + half_width - 1j * upper_cap, centre - half_width - 1j * upper_cap]]),
            skin,
        )
        canvas.polygon(
            np.concatenate([lower_lid, [centre + half_width + 1j * lower_cap, centre - half_width + 1j * lower_cap]]),
            skin,
        )
        canvas.stroke(upper_lid, (40, 28, 24), 0.022)
        canvas.stroke(lower_lid, _rgb(palette.crease, 150), 0.012)
        if face["gender"] == "woman":  # lashes at the outer corner
            corner = upper_lid[-1] if side > 0 else upper_lid[0]
            canvas.stroke(np.array([corner, corner + complex(side * 0.02, -0.015)]), (30, 22, 20), 0.014)


def _draw_nose(canvas: _FaceCanvas, face: Mapping, palette: _Palette, au: np.ndarray) -> None:
    """AU9 wrinkles the bridge and pulls the nostrils up."""
    au9 = au[_AU["AU9"]]
    size = 0.9 if face["age_group"] == "young" else 1.0
    tip_y = 0.075 - 0.004 * au9
    shadow = _rgb(palette.crease, 130)
    for side in (-1, 1):
        canvas.stroke(np.array([complex(side * 0.028, -0.02), complex(side * 0.04 * size, tip_y - 0.01),
                                complex(side * 0.03 * size, tip_y + 0.012)]), shadow, 0.013)  # fmt: skip
        canvas.ellipse(
            complex(side * 0.024 * size, tip_y + 0.012), 0.013, 0.008, _rgb(palette.crease, 200), _CIRCLE_12
        )
    if au9 > 0.05:
        wrinkle = _rgb(palette.crease, 50 * au9)
        half_length = 0.015 + 0.008 * au9
        for y in (-0.05, -0.022, 0.006):
            canvas.stroke(np.array([complex(-half_length, y + 0.006), complex(0, y), complex(half_length, y + 0.006)]),
                          wrinkle, 0.02)  # fmt: skip
        for side in (-1, 1):
            canvas.stroke(np.array([complex(side * 0.05, -0.045), complex(side * 0.08, 0.01)]), wrinkle, 0.018)


def _draw_mouth(canvas: _FaceCanvas, face: Mapping, palette: _Palette, mouth_y: float, au: np.ndarray) -> float:
    """AU12 / AU15 move the lip corners up / down, AU20 stretches and thins the lips, AU25 parts them along
    the whole mouth (teeth show), AU26 opens a tall oval, AU17 pushes the lower lip up. Returns the y of the
    lower lip's bottom."""
    au12, au15, au17, au20, au25, au26 = (au[_AU[n]] for n in ("AU12", "AU15", "AU17", "AU20", "AU25", "AU26"))
    half_width = 0.105 + 0.01 * au20 + 0.004 * au12
    corner_y = mouth_y - 0.014 * au12 + 0.012 * au15 + 0.004 * au20
    centre_y = mouth_y - 0.006 * au17
    lips_apart = max(0.0, 0.008 * au25 - 0.004 * au17)  # flat profile: open up to the corners
    jaw_gap = 0.02 * au26  # oval profile: tall in the centre
    gap = lips_apart + jaw_gap
    thinning = 1 - 0.06 * au20
    upper_thickness = (0.026 if face["gender"] == "woman" else 0.022) * thinning
    lower_thickness = (0.03 + 0.004 * au17) * thinning
    if face["age_group"] == "elderly":
        upper_thickness, lower_thickness = upper_thickness * 0.8, lower_thickness * 0.8

    x = half_width * _UNIT_GRIDS[13]
    opening = np.sqrt(1 - _UNIT_GRIDS[13] ** 2)  # 0 at the corners, 1 at the centre
    middle = corner_y + (centre_y - corner_y) * opening**2
    local_gap = lips_apart * opening**0.3 + jaw_gap * opening
    upper_inner = x + 1j * (middle - 0.5 * local_gap)
    lower_inner = x + 1j * (middle + 0.5 * local_gap)
    upper_outer = upper_inner - 1j * upper_thickness * opening
    lower_outer = lower_inner + 1j * lower_thickness * opening
    canvas.polygon(np.concatenate([upper_outer, lower_outer[::-1]]), palette.lips)
    if gap > 0.004:
        canvas.polygon(np.concatenate([upper_inner, lower_inner[::-1]]), _MOUTH_INSIDE)
        teeth = upper_inner + 1j * np.minimum(local_gap, 0.022)
        canvas.polygon(np.concatenate([upper_inner[1:-1] * 0.92, teeth[-2:0:-1] * 0.92]), _TEETH)
    canvas.stroke(upper_inner, (60, 22, 26), 0.02)
    if gap > 0.004:
        canvas.stroke(lower_inner, (60, 22, 26), 0.014)
    return float(lower_outer.imag.max())


def _draw_chin(canvas: _FaceCanvas, palette: _Palette, lower_lip_y: float, mouth_y: float, au: np.ndarray) -> None:
    """AU17: a crease under the lower lip and a dimpled, highlighted chin boss."""
    au17 = au[_AU["AU17"]]
    if au17 <= 0.05:
        return
    crease_y = max(mouth_y + 0.1, lower_lip_y + 0.025)
    half_width = 0.05 + 0.011 * au17
    canvas.ellipse(complex(0, crease_y + 0.045), 0.07, 0.038, _rgb((255, 255, 255), 20 * au17))
    canvas.stroke(_parabola(half_width, crease_y - 0.015, crease_y, 7), _rgb(palette.crease, 50 * au17), 0.022)
    for x in (-0.025, 0.0, 0.025):
        canvas.ellipse(complex(x, crease_y + 0.045 + abs(x)), 0.01, 0.01, _rgb(palette.crease, 45 * au17), _CIRCLE_12)


def _draw_glasses(canvas: _FaceCanvas, face: Mapping, eye_y: float, width: float, rng: np.random.Generator) -> None:
    if not face["glasses"]:
        return
    frame = _FRAME_RGB[int(rng.integers(len(_FRAME_RGB)))]
    round_frames = rng.random() < 0.5
    for side in (-1, 1):
        centre = complex(side * 0.14, eye_y)
        if round_frames:
            lens = centre + 0.075 * np.append(_CIRCLE_24, _CIRCLE_24[0])
        else:
            lens = centre + np.array([-0.085 - 0.06j, 0.085 - 0.06j, 0.085 + 0.055j, -0.085 + 0.055j, -0.085 - 0.06j])
        canvas.stroke(lens, frame, 0.018)
        canvas.stroke(np.array([centre + side * 0.08 - 0.02j, complex(side * width, eye_y - 0.03)]), frame, 0.016)
    canvas.stroke(np.array([complex(-0.065, eye_y - 0.01), complex(0, eye_y - 0.025), complex(0.065, eye_y - 0.01)]),
                  frame, 0.016)  # fmt: skip


def _background(top: np.ndarray, bottom: np.ndarray, size: int) -> Image.Image:
    """A vertical gradient from `top` to `bottom` (RGB)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    column = (1 - t) * top.astype(np.float32) + t * bottom.astype(np.float32) + 0.5  # (size, 1, 3)
    return Image.fromarray(column.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def _render_face(face: Mapping, resolution: int) -> np.ndarray:
    """One face at `resolution` as float32 (H, W, 3) with pixel noise, before lighting."""
    size = 2 * resolution
    rng = np.random.default_rng(int(face["seed"]))  # identity details not stored as columns
    au = np.asarray(face["action_units"], dtype=np.float64)
    width, height = float(face["face_width"]), float(face["face_height"])
    jaw = rng.uniform(0.82, 1.0)
    hairline = rng.uniform(0.68, 0.76)  # fraction of the face height above the centre
    eye_y, mouth_y = -0.06, 0.2 - (0.01 if face["age_group"] == "young" else 0.0)

    image = _background(face["background_top"], face["background_bottom"], size)
    centre = complex(0.5 + float(face["shift_x"]), 0.51 + float(face["shift_y"]))
    canvas = _FaceCanvas(image, size, centre, float(face["scale"]), float(face["rotation_degrees"]))
    palette = _make_palette(face, rng)
    _draw_hair_back(canvas, face, palette, width, height)
    chin_drop = 0.008 * au[_AU["AU26"]]
    _draw_head(canvas, palette, width, height, jaw, chin_drop)
    _draw_beard(canvas, face, palette, width, height + chin_drop, jaw, rng)
    _draw_fringe(canvas, face, palette, width, height, hairline)
    _draw_eyes(canvas, face, palette, eye_y, au)
    _draw_brows(canvas, face, palette, eye_y, au)
    _draw_nose(canvas, face, palette, au)
    lower_lip_y = _draw_mouth(canvas, face, palette, mouth_y, au)
    _draw_chin(canvas, palette, lower_lip_y, mouth_y, au)
    _draw_glasses(canvas, face, eye_y, width, rng)
    pixels = np.asarray(image.reduce(2), dtype=np.float32)
    return pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * float(face["noise_std"])


def render_faces(attributes: Mapping[str, np.ndarray], config: FaceWorldConfig | None = None) -> np.ndarray:
    """Renders faces from their attributes (a pure function: the same attributes give the same pixels).

    Each face is drawn with PIL at twice the resolution and box-downsampled, pixel noise is seeded by the
    face's `seed`, and lighting is applied on the whole batch with numpy.

    Args:
        attributes: columns as returned by [`sample_faceworld_attributes`] (edit `action_units` to change
            the expression of the same identities), or rows of a FaceWorld dataset (`dataset[:n]`).
        config: only `resolution` is read; default `FaceWorldConfig()`.

    Returns:
        `np.ndarray` of shape `(N, resolution, resolution, 3)`, dtype uint8.

    Example:

    ```py
    >>> attributes = sample_faceworld_attributes(2, 0)
    >>> attributes["action_units"][:, AU_NAMES.index("AU12")] = 5.0  # both smile
    >>> render_faces(attributes).shape
    (2, 64, 64, 3)
    ```
    """
    config = config or FaceWorldConfig()
    faces = _face_rows(attributes)
    resolution = config.resolution
    if not faces:
        return np.zeros((0, resolution, resolution, 3), dtype=np.uint8)
    images = np.stack([_render_face(face, resolution) for face in faces])  # (N, H, W, 3)
    brightness = np.asarray(attributes["brightness"], dtype=np.float32)[:, None, None, None]
    gradient = np.asarray(attributes["light_gradient"], dtype=np.float32)[:, None, None, None]
    x = np.linspace(-1.0, 1.0, resolution, dtype=np.float32)[None, None, :, None]
    images *= brightness * (1.0 + gradient * x)
    return (images.clip(0, 255) + 0.5).astype(np.uint8)


def render_action_units(
    action_units: np.ndarray | Sequence[Sequence[float]], seed: int = 0, config: FaceWorldConfig | None = None
) -> np.ndarray:
    """Renders random identities (sampled from `seed`) with the GIVEN action units, e.g. to compare
    generated faces with real FaceWorld faces of the same AUs.

    Args:
        action_units: `(N, 12)` intensities in [0, 5], in the order of [`AU_NAMES`].
        seed: seed of the identities and nuisances.
        config: the nuisance distributions and resolution; default `FaceWorldConfig()`.

    Returns:
        `np.ndarray` `(N, resolution, resolution, 3)` uint8.

    Example:

    ```py
    >>> happy = np.zeros((3, 12), dtype=np.float32)
    >>> happy[:, [AU_NAMES.index("AU6"), AU_NAMES.index("AU12")]] = 4.0
    >>> render_action_units(happy, seed=0).shape
    (3, 64, 64, 3)
    ```
    """
    action_units = np.asarray(action_units, dtype=np.float32)
    if action_units.ndim != 2 or action_units.shape[1] != len(AU_NAMES):
        raise ValueError(f"`action_units` must have shape (N, {len(AU_NAMES)}), got {action_units.shape}.")
    attributes = sample_faceworld_attributes(len(action_units), seed, config)
    attributes["action_units"] = action_units
    return render_faces(attributes, config)
