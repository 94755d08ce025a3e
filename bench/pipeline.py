"""The pipeline half of the benchmark suite: our `worker apply` and Pillow (bench/pillow_apply.py)
on the same files, the same watermark and the same quality, side by side in one run, each pinned
to one core. Prints CPU ms per image (median of the rounds), the ratio (Pillow's time over ours:
above 1 means we are faster), and each side's peak RSS.

Usage: python pipeline.py WORKER_BINARY WORKLOAD_DIR [ROUNDS]
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = [
    ("12 MP JPEG, tiled logo", "jpeg-12mp", [{"task": "watermark"}]),
    ("12 MP JPEG, anchored logo", "jpeg-12mp", [{"task": "watermark", "position": "bottom-right"}]),
    (
        "12 MP JPEG, anchored text",
        "jpeg-12mp",
        [{"task": "watermark", "text": "© Example 2026", "position": "bottom-right"}],
    ),
    (
        "12 MP JPEG, resize then tiled",
        "jpeg-12mp",
        [{"task": "resize", "max_width": 1920, "max_height": 1920}, {"task": "watermark"}],
    ),
    ("2 MP JPEG, tiled logo", "jpeg-2mp", [{"task": "watermark"}]),
    ("2 MP JPEG, anchored logo", "jpeg-2mp", [{"task": "watermark", "position": "bottom-right"}]),
    (
        "2 MP JPEG, anchored text",
        "jpeg-2mp",
        [{"task": "watermark", "text": "© Example 2026", "position": "bottom-right"}],
    ),
    ("2 MP RGBA PNG, tiled logo", "png-2mp", [{"task": "watermark"}]),
]


def run(cmd):
    """Runs `cmd` pinned to core 0; returns (CPU ms it reported, peak RSS in MiB)."""
    proc = subprocess.Popen(
        ["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed: {err}")
    cpu = float(re.search(r"cpu ([0-9.]+) ms", err).group(1))
    return cpu, usage.ru_maxrss / 1024


def out_size(folder):
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def main():
    worker, workload = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    py = sys.executable
    print(f"one core (taskset -c 0), {rounds} rounds, median CPU ms per image; ratio = Pillow / ours")
    print(
        f"{'workload':<32} {'Pillow':>8} {'ours':>8} {'ratio':>6} "
        f"{'RSS Pillow':>11} {'RSS ours':>9}  output bytes (Pillow / ours)"
    )
    for label, folder, pipeline in CONFIGS:
        files = sorted(
            os.path.join(workload, folder, f) for f in os.listdir(os.path.join(workload, folder))
        )
        spec = json.dumps(pipeline)
        ours, theirs, planar, rss_ours, rss_theirs, rss_planar = [], [], [], 0.0, 0.0, 0.0
        # Anchored marks on JPEGs take the DCT path: time the planar path beside it.
        anchored = folder.startswith("jpeg") and all(
            s.get("position", "tiled") != "tiled" for s in pipeline if s["task"] == "watermark"
        ) and all(s["task"] == "watermark" for s in pipeline)
        with tempfile.TemporaryDirectory() as tmp:
            out_ours, out_theirs = os.path.join(tmp, "ours"), os.path.join(tmp, "pillow")
            for _ in range(rounds):
                cpu, rss = run([py, os.path.join(HERE, "pillow_apply.py"), "--pipeline", spec,
                                "--out", out_theirs] + files)
                theirs.append(cpu / len(files))
                rss_theirs = max(rss_theirs, rss)
                cpu, rss = run([worker, "apply", "--quiet", "--pipeline", spec, "--out", out_ours]
                               + files)
                ours.append(cpu / len(files))
                rss_ours = max(rss_ours, rss)
                if anchored:
                    cpu, rss = run([worker, "apply", "--quiet", "--path", "planar", "--pipeline",
                                    spec, "--out", out_ours] + files)
                    planar.append(cpu / len(files))
                    rss_planar = max(rss_planar, rss)
            sizes = f"{out_size(out_theirs):,} / {out_size(out_ours):,}"
            # Quality, untimed: each of our results against a full-precision render of its marks.
            listing = subprocess.run(
                [worker, "apply", "--psnr", "--pipeline", spec, "--out", out_ours] + files,
                capture_output=True, text=True, check=True,
            ).stdout
            dbs = [float(v) for v in re.findall(r"psnr ([0-9.]+) dB", listing)]
            paths = sorted(set(re.findall(r"([\w-]+) path", listing)))
            quality = f"  PSNR min {min(dbs):.1f} dB" if dbs else ""
        a, b = statistics.median(theirs), statistics.median(ours)
        print(
            f"{label:<32} {a:>8.1f} {b:>8.1f} {a / b:>5.2f}x "
            f"{rss_theirs:>8.0f} MiB {rss_ours:>5.0f} MiB  {sizes}{quality}",
            flush=True,
        )
        if anchored:
            p = statistics.median(planar)
            print(
                f"{'  (the planar path instead)':<32} {'':>8} {p:>8.1f} {a / p:>5.2f}x "
                f"{'':>12} {rss_planar:>5.0f} MiB  ours took the {' and '.join(paths)} path: "
                f"{b / p:.2f} of the planar path's time",
                flush=True,
            )


if __name__ == "__main__":
    main()
