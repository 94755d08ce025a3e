"""The standard benchmark workload, made deterministically (the same bytes on every run).

- jpeg-2mp/: 10 photo-like JPEGs of 1920 x 1080, q90, 4:2:0
- jpeg-12mp/: 10 photo-like JPEGs of 4000 x 3000, q90, 4:2:0
- png-2mp/: 5 RGBA PNGs of 1920 x 1080 (a photo with a soft transparent border)
- small/: 2,000 JPEGs of 64 x 64, q90
- jpeg-vga/: 1 JPEG of 640 x 480, q90

Usage: python workload.py DIR   (skips what is already there)
"""

import os
import sys

import numpy as np
from PIL import Image

VERSION = "2"


def photo(w, h, seed):
    """A photo-like RGB image: smooth light and colour, shapes with edges, texture, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = x / w, y / h
    img = np.empty((h, w, 3), np.float32)
    base = rng.uniform(40, 200, size=3)
    for c in range(3):
        a, b = rng.uniform(-60, 60, size=2)
        img[..., c] = base[c] + a * fx + b * fy
    # Large soft shapes (sky, walls, faces) with edges.
    for _ in range(12):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.3) * min(w, h)
        colour = rng.uniform(-70, 70, size=3)
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        mask = np.clip((r - d) / (0.01 * r + 1), 0, 1)
        img += mask[..., None] * colour
    # Texture (foliage, fabric) at a few scales.
    for period, amp in ((37.0, 10.0), (11.0, 6.0), (4.3, 3.0)):
        p1, p2 = rng.uniform(0, 6.28, size=2)
        tex = np.sin(x / period + p1) * np.cos(y / (period * 1.3) + p2)
        img += (amp * tex)[..., None]
    img += rng.normal(0, 4.0, size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make(path, build):
    if os.path.exists(path):
        return
    tmp = path + ".tmp"
    build(tmp)
    os.replace(tmp, path)


def main(root):
    os.makedirs(root, exist_ok=True)
    stamp = os.path.join(root, "VERSION")
    if open(stamp).read().strip() != VERSION if os.path.exists(stamp) else False:
        sys.exit(f"{root} holds another workload version; delete it")
    sets = [
        ("jpeg-2mp", 10, 1920, 1080),
        ("jpeg-12mp", 10, 4000, 3000),
        ("jpeg-vga", 1, 640, 480),
    ]
    for name, count, w, h in sets:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            make(
                os.path.join(root, name, f"{name}-{i:02}.jpg"),
                lambda p, w=w, h=h, i=i: photo(w, h, 1000 * w + i).save(
                    p, "JPEG", quality=90, subsampling="4:2:0"
                ),
            )
    os.makedirs(os.path.join(root, "png-2mp"), exist_ok=True)
    for i in range(5):

        def rgba(p, i=i):
            img = photo(1920, 1080, 7 + i).convert("RGBA")
            y, x = np.mgrid[0:1080, 0:1920]
            edge = np.minimum.reduce([x, y, 1919 - x, 1079 - y]).astype(np.float32)
            alpha = np.clip(edge * 2.0, 0, 255).astype(np.uint8)
            img.putalpha(Image.fromarray(alpha, "L"))
            img.save(p, "PNG", compress_level=6)

        make(os.path.join(root, "png-2mp", f"png-2mp-{i:02}.png"), rgba)
    small = os.path.join(root, "small")
    os.makedirs(small, exist_ok=True)
    if len(os.listdir(small)) < 2000:
        tile = photo(64 * 50, 64 * 40, 99)
        for i in range(2000):
            x, y = (i % 50) * 64, (i // 50) * 64
            make(
                os.path.join(small, f"small-{i:04}.jpg"),
                lambda p, x=x, y=y: tile.crop((x, y, x + 64, y + 64)).save(p, "JPEG", quality=90),
            )
    with open(stamp, "w") as f:
        f.write(VERSION + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
