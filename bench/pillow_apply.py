"""The baseline: what a careful Python worker does with Pillow, for the same pipelines as
`worker apply` (the watermark and resize tasks, with our defaults). The mark is prepared once per
image size and pasted; JPEG is written at the same quality, PNG at compress_level=1.

Usage: python pillow_apply.py --pipeline JSON [--logo FILE] --out DIR FILE...
Prints "cpu N ms" (the CPU time of the processing loop) on stderr.
"""

import argparse
import io
import json
import math
import os
import sys
import time

from PIL import Image, ImageDraw, ImageFont, ImageOps

ASSETS = os.path.join(os.path.dirname(__file__), "..", "jobs", "assets")
DEFAULTS = {
    "watermark": {
        "text": "",
        "color": "#ffffff",
        "position": "tiled",
        "opacity": 0.5,
        "scale": 0.4,
        "rotation": 30.0,
        "margin": 0.03,
    },
    "resize": {"max_width": 1920, "max_height": 1920, "enlarge": False},
}


class Watermark:
    def __init__(self, params, logo):
        self.p = params
        self.logo = logo
        self.marks = {}

    def mark(self, w, h):
        key = (w, h)
        if key not in self.marks:
            self.marks[key] = self.make(w, h)
        return self.marks[key]

    def make(self, w, h):
        p = self.p
        target_w = min(max(round(w * p["scale"]), 1), max(w, 1))
        if p["text"].strip():
            font = ImageFont.truetype(os.path.join(ASSETS, "DejaVuSans-Bold.ttf"), 100)
            box = font.getbbox(p["text"])
            size = max(4, min(100 * target_w / max(box[2] - box[0], 1), 100 * h / (max(box[3], 1) * 1.35)))
            font = ImageFont.truetype(os.path.join(ASSETS, "DejaVuSans-Bold.ttf"), int(size))
            stroke = max(1, round(size / 24))
            box = font.getbbox(p["text"], stroke_width=stroke)
            pad = math.ceil(size / 10) + 2
            mark = Image.new("RGBA", (box[2] + 2 * pad, box[3] + 2 * pad), (0, 0, 0, 0))
            colour = tuple(int(p["color"][i : i + 2], 16) for i in (1, 3, 5))
            ImageDraw.Draw(mark).text(
                (pad, pad), p["text"], font=font, fill=colour + (255,),
                stroke_width=stroke, stroke_fill=(20, 20, 20, 160),
            )
        else:
            logo = self.logo
            fit_w = max(int(h * logo.width / logo.height), 1)
            tw = min(target_w, fit_w)
            th = max(round(logo.height * tw / logo.width), 1)
            mark = logo.resize((tw, th), Image.BILINEAR)
        alpha = mark.getchannel("A").point(lambda a: round(a * p["opacity"]))
        mark.putalpha(alpha)
        if p["position"] == "tiled" and abs(p["rotation"]) > 1e-9:
            mark = mark.rotate(p["rotation"], resample=Image.BILINEAR, expand=True)
        return mark

    def positions(self, mark, w, h):
        p = self.p
        mw, mh = mark.size
        margin = round(p["margin"] * min(w, h))
        if p["position"] == "tiled":
            step_x, step_y = max(mw + margin, 1), max(mh + margin, 1)
            out, row, y = [], 0, -(mh // 2)
            while y < h:
                shift = step_x // 2 if row % 2 == 1 else 0
                x = -(mw // 2) - shift
                while x < w:
                    out.append((x, y))
                    x += step_x
                y += step_y
                row += 1
            return out
        col, row = {
            "top-left": (0, 0), "top": (1, 0), "top-right": (2, 0), "left": (0, 1),
            "right": (2, 1), "bottom-left": (0, 2), "bottom": (1, 2), "bottom-right": (2, 2),
        }.get(p["position"], (1, 1))
        x = [margin, (w - mw) // 2, w - mw - margin][col]
        y = [margin, (h - mh) // 2, h - mh - margin][row]
        return [(x, y)]

    def __call__(self, img):
        mark = self.mark(*img.size)
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.mode else "RGB")
        for pos in self.positions(mark, *img.size):
            img.paste(mark, pos, mark)
        return img


class Resize:
    def __init__(self, params):
        self.p = params

    def __call__(self, img):
        w, h = img.size
        ratio = min(self.p["max_width"] / w, self.p["max_height"] / h)
        if not self.p["enlarge"]:
            ratio = min(ratio, 1.0)
        if abs(ratio - 1) < 1e-12:
            return img
        return img.resize((max(round(w * ratio), 1), max(round(h * ratio), 1)), Image.BICUBIC)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--logo")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    logo = Image.open(args.logo or os.path.join(ASSETS, "logo.png")).convert("RGBA")
    steps = []
    for step in json.loads(args.pipeline):
        params = dict(DEFAULTS[step["task"]], **{k: v for k, v in step.items() if k != "task"})
        steps.append(Watermark(params, logo) if step["task"] == "watermark" else Resize(params))
    os.makedirs(args.out, exist_ok=True)
    started = time.process_time()
    for path in args.files:
        with open(path, "rb") as f:
            data = f.read()
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        img = ImageOps.exif_transpose(img)
        for step in steps:
            img = step(img)
        out = io.BytesIO()
        if fmt == "JPEG":
            img.convert("RGB").save(out, "JPEG", quality=args.quality)
        else:
            img.save(out, "PNG", compress_level=1)
        # Written as soon as it is made, as `worker apply` does.
        with open(os.path.join(args.out, os.path.basename(path)), "wb") as f:
            f.write(out.getvalue())
    print(f"cpu {(time.process_time() - started) * 1000:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
