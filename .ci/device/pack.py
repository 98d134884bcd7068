"""Pack a grid's results under /tmp/runs into $OUT within what a device call may return (at most 8 files,
16 MiB each, 64 MiB in all): metrics.tgz (every run's metrics.json, config.json, train.log), models_N.tar
(the weights of finished runs not returned by an earlier call, <= 15 MiB each) and, with --states, states_N.tar
(the train_state.pt of unfinished runs, xz-compressed as train_state.pt.xz, those whose resume saves the
most training time per byte first, in what room is left; here: tar xf, then xz -df every train_state.pt.xz).

    python3 .ci/device/pack.py [--states] [--commit]

--commit records the models packed now as returned (/tmp/returned.txt), for the last pack of a call.
Each pack replaces the previous one in $OUT, so a call cut short still returns its latest pack."""

import io
import json
import lzma
import os
import sys
import tarfile
from pathlib import Path

MiB = 1 << 20
RUNS, OUT, RETURNED = Path("/tmp/runs"), Path(os.environ["OUT"]), Path("/tmp/returned.txt")
FILE_LIMIT, TOTAL_LIMIT, MAX_FILES = 15 * MiB, 60 * MiB, 8


def chunks(paths, budget, files_left, size_of=lambda p: p.stat().st_size, at_least=lambda p: 0):
    """Pack paths, most important first, into at most files_left tars of <= FILE_LIMIT each and <= budget
    bytes in all (a path's bytes: size_of(path), never below at_least(path), which is checked first so
    that a costly size_of is skipped where even that much would not fit); a path that does not fit is
    skipped and the next one tried (first fit). Returns (groups, bytes)."""
    groups, sizes, used = [], [], 0
    for p in paths:
        if used + at_least(p) + 4096 > budget:
            continue
        s = size_of(p) + 4096
        if used + s > budget or s > FILE_LIMIT:
            continue
        i = next((i for i, size in enumerate(sizes) if size + s <= FILE_LIMIT), None)
        if i is None:
            if len(groups) >= files_left:
                continue
            groups.append([])
            sizes.append(0)
            i = len(groups) - 1
        groups[i].append(p)
        sizes[i] += s
        used += s
    return groups, used


def write(prefix, groups, packed=None):
    """One tar per group; with ``packed`` (path -> bytes), a path goes in as those bytes, named path.xz."""
    for old in OUT.glob(f"{prefix}_*.tar"):
        old.unlink()
    for i, group in enumerate(groups):
        with tarfile.open(OUT / f"{prefix}_{i}.tar.part", "w") as tar:
            for p in group:
                name = str(p.relative_to(RUNS))
                if packed is None:
                    tar.add(p, arcname=name)
                    continue
                info = tarfile.TarInfo(name + ".xz")
                info.size, info.mtime = len(packed[p]), int(p.stat().st_mtime)
                tar.addfile(info, io.BytesIO(packed[p]))
        (OUT / f"{prefix}_{i}.tar.part").rename(OUT / f"{prefix}_{i}.tar")


def main(argv):
    with tarfile.open(OUT / "metrics.tgz.part", "w:gz") as tar:
        for name in ("metrics.json", "config.json", "train.log"):
            for p in sorted(RUNS.glob(f"**/{name}")):
                tar.add(p, arcname=str(p.relative_to(RUNS)))
    (OUT / "metrics.tgz.part").rename(OUT / "metrics.tgz")
    used, files = (OUT / "metrics.tgz").stat().st_size, 1
    returned = set(RETURNED.read_text().split()) if RETURNED.exists() else set()
    models = [p for p in sorted(RUNS.glob("**/model.safetensors")) if str(p) not in returned]
    groups, size = chunks(models, TOTAL_LIMIT - used, MAX_FILES - files)
    write("models", groups)
    used, files = used + size, files + len(groups)
    packed = [str(p) for g in groups for p in g]
    if len(packed) < len(models):
        print(f"pack: {len(models) - len(packed)} finished model(s) left for a later call "
              f"(one over {FILE_LIMIT // MiB} MiB never fits)")
    if "--states" in argv:
        states = [p for p in RUNS.glob("**/train_state.pt") if not (p.parent / "model.safetensors").exists()]

        def saved_per_byte(state):
            # the training time a resume saves (what a run left out must redo), per byte carried back
            hist = json.loads((state.parent / "metrics.json").read_text())["history"]
            return (hist[-1]["elapsed_s"] if hist else 0.0) / state.stat().st_size
        states.sort(key=saved_per_byte, reverse=True)
        # xz takes 9-13% off (fp32 weights and Adam moments): two or three more runs' states per call.
        # Compressed lazily, most valuable first (about 0.3 s per run's state, one core)
        xz = {}

        def xz_size(p):
            if p not in xz:
                xz[p] = lzma.compress(p.read_bytes(), preset=3)
            return len(xz[p])
        sgroups, _ = chunks(states, TOTAL_LIMIT - used, MAX_FILES - files, size_of=xz_size,
                            at_least=lambda p: 0.8 * p.stat().st_size)
        write("states", sgroups, xz)
        kept = {p for g in sgroups for p in g}
        left = ", ".join(str(p.parent.relative_to(RUNS)) for p in states if p not in kept)
        print(f"pack: states of {len(kept)} of {len(states)} unfinished run(s)"
              + (f": left out {left}" if left else ""))
    if "--commit" in argv:
        with RETURNED.open("a") as f:
            f.writelines(p + "\n" for p in packed)


if __name__ == "__main__":
    main(sys.argv[1:])
