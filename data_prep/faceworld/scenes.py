"""Background scenes, one painter per value of the "scene" attribute.

A painter takes the image grid X, Y ([1, H, W], -1..1, y down), per-item layout numbers u
([b, SCENE_UNIFORMS] in [0, 1): horizon heights, positions, phases, colour choices), the item's
noise textures ({channel: [b, H, W]}) and the pixel size `aa`, and returns RGB [b, 3, H, W] in
[0, 1]. Each scene has its own unmistakable palette and objects (sea and sand, tree trunks,
buildings with windows, snowy pines, water with bubbles and weeds, stars and a planet, dunes with a
cactus, a wall with a sofa, a picture and a lamp), so that it stays recognisable at 64 x 64 and in
every style.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from data_prep.faceworld.shapes import box_d, ellipse_d, hash01, lerp, paint, soft, tri, wave

SCENE_UNIFORMS = 8


def _c(*rgb: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def _canvas(img: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """A writable [b, 3, h, w] copy of a base picture that may not depend on the item or on x or y yet."""
    return img.expand(b, 3, h, w).contiguous()


def _u(u: torch.Tensor, k: int) -> torch.Tensor:
    return u[:, k].view(-1, 1, 1)


def beach(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    horizon = -0.25 + 0.3 * _u(u, 0)
    t = ((Y + 1.0) / (horizon + 1.0)).clamp(0, 1)
    img = lerp(_c(0.30, 0.58, 0.95, like=X), _c(0.72, 0.86, 1.0, like=X), t)
    img = _canvas(img, b, h, w)
    clouds = ((nz["smooth"] - 0.62) * 5.0).clamp(0, 1) * (Y < horizon)
    paint(img, clouds * 0.8, _c(1.0, 1.0, 1.0, like=X))
    sun = soft(ellipse_d(X - (_u(u, 1) * 1.6 - 0.8), Y - (horizon - 0.45), 0.12, 0.12), aa)
    paint(img, sun, _c(1.0, 0.97, 0.75, like=X))
    shore = horizon + 0.3 + 0.2 * _u(u, 2) + 0.05 * wave(X * 1.5 + _u(u, 3))
    sea_t = ((Y - horizon) / (shore - horizon)).clamp(0, 1)
    sea = lerp(_c(0.05, 0.35, 0.65, like=X), _c(0.15, 0.65, 0.75, like=X), sea_t)
    sea = sea * (0.9 + 0.2 * nz["streak"]).unsqueeze(1)
    paint(img, soft(horizon - Y, aa), sea)
    sand = _c(0.94, 0.83, 0.60, like=X) * (0.88 + 0.2 * nz["fine"]).unsqueeze(1)
    paint(img, soft(shore - Y, aa), sand)
    paint(img, soft((Y - shore).abs() - 0.025, aa), _c(0.97, 0.98, 1.0, like=X))
    return img


def forest(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    leaves = nz["smooth"]
    img = lerp(_c(0.10, 0.26, 0.10, like=X), _c(0.42, 0.62, 0.25, like=X), leaves)
    img = _canvas(img, b, h, w)
    ground = 0.45 + 0.3 * _u(u, 0)
    for k, (period, width, shade) in enumerate(((0.22, 0.22, 0.55), (0.45, 0.2, 1.0))):
        p = period * (0.8 + 0.5 * _u(u, 1 + k))
        x = (X + _u(u, 3 + k)) / p
        trunk = soft((tri(x) - width) * p, aa) * soft(Y - ground - 0.1, aa)
        paint(img, trunk, _c(0.30, 0.19, 0.10, like=X) * shade + (1 - shade) * _c(0.25, 0.35, 0.2, like=X))
    spots = ((nz["fine"] - 0.7) * 6.0).clamp(0, 1) * (Y < ground)
    paint(img, spots * 0.6, _c(0.75, 0.85, 0.35, like=X))
    floor = _c(0.28, 0.36, 0.14, like=X) * (0.8 + 0.4 * nz["fine"]).unsqueeze(1)
    paint(img, soft(ground - Y, aa), floor)
    return img


def city_street(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    img = lerp(_c(0.55, 0.72, 0.92, like=X), _c(0.85, 0.88, 0.92, like=X), ((Y + 1) / 1.2).clamp(0, 1))
    img = _canvas(img, b, h, w)
    width = 0.32 + 0.14 * _u(u, 0)
    col = torch.floor((X + 3.0 * _u(u, 1)) / width)
    top = -0.95 + 0.75 * hash01(col, 1)
    tone = hash01(col, 2).unsqueeze(1)
    wall = lerp(_c(0.55, 0.55, 0.58, like=X), _c(0.62, 0.36, 0.28, like=X), (tone > 0.5).float().squeeze(1))
    wall = wall * (0.75 + 0.4 * tone)
    building = soft(top - Y, aa)
    paint(img, building, wall)
    wx = (X + 3.0 * _u(u, 1)) / 0.09
    wy = (Y + _u(u, 2)) / 0.11
    windows = ((tri(wx) > 0.45) & (tri(wy) > 0.4)).float() * soft(top + 0.06 - Y, aa)
    lit = (hash01(torch.floor(wx) * 131 + torch.floor(wy), 3) > 0.6).float()
    paint(img, windows, lerp(_c(0.20, 0.25, 0.35, like=X), _c(0.98, 0.88, 0.45, like=X), lit))
    road_y = 0.5 + 0.25 * _u(u, 3)
    paint(img, soft(road_y - 0.08 - Y, aa), _c(0.72, 0.70, 0.66, like=X))
    paint(img, soft(road_y - Y, aa), _c(0.22, 0.22, 0.24, like=X) * (0.9 + 0.2 * nz["fine"]).unsqueeze(1))
    lane = soft((Y - (road_y + 0.22)).abs() - 0.018, aa) * (tri(X * 2.5 + _u(u, 4)) > 0.5).float()
    paint(img, lane, _c(0.95, 0.95, 0.9, like=X))
    return img


def snow(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    img = lerp(_c(0.68, 0.76, 0.86, like=X), _c(0.90, 0.93, 0.97, like=X), ((Y + 1) / 1.3).clamp(0, 1))
    img = _canvas(img, b, h, w)
    ground = 0.25 + 0.35 * _u(u, 0)
    for k, (period, scale, shade) in enumerate(((0.34, 0.7, 0.7), (0.55, 1.0, 1.0))):
        p = period * (0.85 + 0.4 * _u(u, 1 + k))
        lx = (tri((X + _u(u, 3 + k)) / p) * 0.5) * p  # distance to the nearest trunk line
        top = ground - scale * (0.9 + 0.5 * hash01(torch.floor((X + _u(u, 3 + k)) / p + 0.5), 7 + k))
        inside = soft(lx - (Y - top) * 0.42, aa) * soft(Y - ground - 0.05, aa) * soft(top - Y, aa)
        green = _c(0.08, 0.28, 0.18, like=X) * shade + (1 - shade) * _c(0.5, 0.6, 0.65, like=X)
        paint(img, inside, green)
        layers = (tri((Y - top) / 0.16) > 0.7).float() * inside
        paint(img, layers * 0.85, _c(0.96, 0.97, 1.0, like=X))
    snowfield = _c(0.93, 0.95, 1.0, like=X) * (0.9 + 0.12 * nz["smooth"]).unsqueeze(1)
    paint(img, soft(ground - Y, aa), snowfield)
    flakes = ((nz["white"] - 0.965) * 40).clamp(0, 1)
    paint(img, flakes, _c(1.0, 1.0, 1.0, like=X))
    return img


def under_the_sea(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    img = lerp(_c(0.10, 0.55, 0.72, like=X), _c(0.0, 0.12, 0.32, like=X), ((Y + 1) / 2).clamp(0, 1))
    img = _canvas(img, b, h, w)
    rays = (tri((X + 0.45 * Y) * 2.2 + _u(u, 0)) - 0.6).clamp(0, 1) * (0.6 - 0.5 * Y).clamp(0, 1)
    paint(img, rays * 0.5, _c(0.55, 0.85, 0.9, like=X))
    sand_y = 0.72 + 0.2 * _u(u, 1)
    paint(img, soft(sand_y - Y, aa), _c(0.75, 0.68, 0.45, like=X) * (0.7 + 0.3 * nz["fine"]).unsqueeze(1))
    sway = 0.06 * wave(Y * 1.5 + _u(u, 2))
    p = 0.28 + 0.1 * _u(u, 3)
    weeds = soft((tri((X + sway + _u(u, 4)) / p) - 0.16) * p, aa)
    height = 0.1 + 0.5 * hash01(torch.floor((X + sway + _u(u, 4)) / p + 0.5), 11)
    weeds = weeds * soft(height - Y, aa)
    paint(img, weeds, _c(0.10, 0.55, 0.25, like=X))
    for k in range(3):
        bx = _u(u, 5 + k) * 1.8 - 0.9
        by = 0.5 - 1.3 * hash01((_u(u, 5 + k) * 1000).floor(), 5)
        r = 0.05 + 0.04 * k
        ring = soft(ellipse_d(X - bx, Y - by, r, r).abs() - 0.012, aa)
        paint(img, ring, _c(0.85, 0.95, 1.0, like=X))
    fx, fy = X - (_u(u, 6) * 1.4 - 0.7), Y - (_u(u, 7) * 0.6 - 0.2)
    tail = torch.maximum(torch.maximum(fy.abs() - (fx - 0.1) * 0.7, 0.1 - fx), fx - 0.22)
    fish = soft(torch.minimum(ellipse_d(fx, fy, 0.13, 0.065), tail), aa)
    paint(img, fish, _c(1.0, 0.55, 0.1, like=X))
    return img


def outer_space(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    neb = nz["smooth"].square()
    img = lerp(_c(0.01, 0.01, 0.05, like=X), _c(0.30, 0.10, 0.42, like=X), neb * 0.8)
    img = _canvas(img, b, h, w)
    stars = ((nz["white"] - 0.975) * 60).clamp(0, 1)
    paint(img, stars, _c(1.0, 1.0, 0.95, like=X))
    cx, cy = _u(u, 0) * 1.6 - 0.8, _u(u, 1) * 0.7 - 0.9
    r = 0.22 + 0.2 * _u(u, 2)
    planet = soft(ellipse_d(X - cx, Y - cy, r, r), aa)
    choice = _u(u, 3)
    color = torch.where((choice < 0.33).view(-1, 1, 1, 1), _c(0.85, 0.45, 0.2, like=X),
                        torch.where((choice < 0.66).view(-1, 1, 1, 1), _c(0.3, 0.55, 0.9, like=X),
                                    _c(0.75, 0.3, 0.3, like=X)))
    lit = 0.35 + 0.65 * soft(ellipse_d(X - cx + 0.35 * r, Y - cy + 0.35 * r, r, r), 0.6 * r)
    bands = 0.85 + 0.15 * tri((Y - cy) / (0.25 * r))
    paint(img, planet, color * (lit * bands).unsqueeze(1))
    ring = soft((ellipse_d(X - cx, (Y - cy) * 3.5, 1.7 * r, 1.7 * r)).abs() - 0.05, aa)
    ring = ring * (1 - planet * (Y < cy).float())
    paint(img, ring * 0.8, _c(0.85, 0.8, 0.65, like=X))
    return img


def desert(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    img = lerp(_c(0.98, 0.78, 0.50, like=X), _c(1.0, 0.92, 0.72, like=X), ((Y + 1) / 1.2).clamp(0, 1))
    img = _canvas(img, b, h, w)
    sun = soft(ellipse_d(X - (_u(u, 0) * 1.6 - 0.8), Y + 0.65 - 0.2 * _u(u, 1), 0.16, 0.16), aa)
    paint(img, sun, _c(1.0, 0.98, 0.85, like=X))
    for k, (base, amp, color) in enumerate(((-0.05, 0.18, (0.93, 0.66, 0.36)), (0.35, 0.22, (0.85, 0.52, 0.25)))):
        top = base + 0.2 * _u(u, 2 + k) - amp * wave(X * (0.7 + 0.5 * k) + _u(u, 4 + k))
        shade = (0.85 + 0.25 * wave(X * (0.7 + 0.5 * k) + _u(u, 4 + k) + 0.25)).unsqueeze(1)
        paint(img, soft(top - Y, aa), _c(*color, like=X) * shade * (0.92 + 0.1 * nz["fine"]).unsqueeze(1))
    cx = _u(u, 6) * 1.7 - 0.85
    cy = 0.2 + 0.3 * _u(u, 7)
    trunk = box_d(X - cx, Y - (cy + 0.35), 0.045, 0.4)
    dx = X - cx
    arm_l = torch.minimum(box_d(dx + 0.1, Y - cy - 0.08, 0.07, 0.03), box_d(dx + 0.15, Y - cy + 0.03, 0.03, 0.1))
    arm_r = torch.minimum(box_d(dx - 0.1, Y - cy - 0.16, 0.07, 0.03), box_d(dx - 0.15, Y - cy + 0.05, 0.03, 0.1))
    cactus = soft(torch.minimum(trunk, torch.minimum(arm_l, arm_r)), aa)
    paint(img, cactus, _c(0.20, 0.50, 0.22, like=X))
    return img


def living_room(X, Y, u, nz, aa):
    b, h, w = nz["white"].shape
    pick = _u(u, 0)
    wall = torch.where((pick < 0.4).view(-1, 1, 1, 1), _c(0.88, 0.78, 0.62, like=X),
                       torch.where((pick < 0.7).view(-1, 1, 1, 1), _c(0.70, 0.80, 0.68, like=X),
                                   _c(0.72, 0.78, 0.88, like=X)))
    stripes = 0.94 + 0.06 * (tri(X * 6 + _u(u, 1)) > 0.5).float()
    img = wall * stripes.unsqueeze(1) * torch.ones(b, 3, h, w, dtype=X.dtype, device=X.device)
    px, py = _u(u, 2) * 1.2 - 0.6, -0.55 + 0.2 * _u(u, 3)
    frame = soft(box_d(X - px, Y - py, 0.26, 0.19), aa)
    paint(img, frame, _c(0.35, 0.22, 0.12, like=X))
    pic = soft(box_d(X - px, Y - py, 0.21, 0.14), aa)
    paint(img, pic, lerp(_c(0.5, 0.7, 0.95, like=X), _c(0.3, 0.6, 0.3, like=X), (Y > py).float()))
    lx = torch.where(_u(u, 4) < 0.5, -0.78, 0.78) + 0.1 * _u(u, 5)
    shade = soft(torch.maximum(box_d(X - lx, Y + 0.2, 0.16, 0.12), (X - lx).abs() - 0.1 - (Y + 0.32) * 0.5), aa)
    pole = soft(box_d(X - lx, Y - 0.4, 0.02, 0.5), aa)
    paint(img, pole, _c(0.25, 0.2, 0.15, like=X))
    paint(img, shade, _c(1.0, 0.92, 0.65, like=X))
    sofa_y = 0.35 + 0.2 * _u(u, 6)
    sofa_pick = _u(u, 7)
    sofa_c = torch.where((sofa_pick < 0.33).view(-1, 1, 1, 1), _c(0.55, 0.18, 0.15, like=X),
                         torch.where((sofa_pick < 0.66).view(-1, 1, 1, 1), _c(0.22, 0.32, 0.55, like=X),
                                     _c(0.45, 0.33, 0.22, like=X)))
    back = soft(sofa_y - Y, aa)
    paint(img, back, sofa_c * (0.9 + 0.15 * nz["smooth"]).unsqueeze(1))
    cushions = soft((tri(X * 1.6 + 0.5) - 0.06) * 0.6, aa) * back * soft(sofa_y + 0.05 - Y, aa)
    paint(img, (1 - cushions) * back * 0.35, sofa_c * 0.6)
    paint(img, soft(0.88 - Y, aa), _c(0.55, 0.38, 0.22, like=X) * (0.85 + 0.2 * nz["streak"]).unsqueeze(1))
    return img


PAINTERS: dict[str, Callable] = {
    "beach": beach, "forest": forest, "city street": city_street, "snow": snow,
    "under the sea": under_the_sea, "outer space": outer_space, "desert": desert, "living room": living_room,
}

# colour of the light each scene casts on the person (multiplies the foreground)
SCENE_LIGHT: dict[str, tuple[float, float, float]] = {
    "beach": (1.06, 1.02, 0.96), "forest": (0.92, 1.02, 0.88), "city street": (1.0, 1.0, 1.0),
    "snow": (0.98, 1.02, 1.08), "under the sea": (0.72, 0.92, 1.08), "outer space": (0.78, 0.78, 0.95),
    "desert": (1.10, 0.98, 0.82), "living room": (1.05, 0.97, 0.86),
}
