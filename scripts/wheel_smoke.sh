#!/usr/bin/env bash
# The package as users get it: build a wheel from this checkout, install it into a fresh virtual environment
# (which reuses the project venv's already-installed dependencies through a .pth line, so torch is not
# downloaded again), and from a folder outside the repository generate one image with the shipped model,
# load the shipped codec, send one payload through a link and run `splitldm --help`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
WHEEL="$(ls "$WORK"/dist/splitldm-*.whl)"
python - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))})
assert tops == ["splitldm"], f"wheel installs top-level names {tops}, expected only splitldm"
for need in ("splitldm/checkpoints/tiny/model_index.json", "splitldm/checkpoints/seed-codec/config.json", "splitldm/py.typed"):
    assert need in names, f"wheel lacks {need}"
print(f"[wheel] {len(names)} files, top-level {tops}")
PY
python -m venv --without-pip "$WORK/venv"
DEPS="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SITE="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$DEPS" > "$SITE/_splitldm_reused_deps.pth"  # appended after the fresh site-packages: the wheel wins
python -m pip --python "$WORK/venv/bin/python" install -q --no-deps "$WHEEL"
python -m pip --python "$WORK/venv/bin/python" check  # every declared dependency is satisfied
mkdir -p "$WORK/outside" && cd "$WORK/outside"
export HF_HUB_OFFLINE=1
start=$(date +%s.%N)
"$WORK/venv/bin/splitldm" --help >/dev/null
echo "[wheel] splitldm --help: $(python -c "print(round($(date +%s.%N) - $start, 2))") s"
"$WORK/venv/bin/python" - <<'PY'
import pathlib, importlib.util
import torch
import splitldm as sl
assert pathlib.Path(sl.__file__).is_relative_to(pathlib.Path(__import__("sysconfig").get_paths()["purelib"])), sl.__file__
assert importlib.util.find_spec("training") is None, "a top-level 'training' package is installed"
pipe = sl.load_pipeline("tiny")
split = sl.SplitPipeline(pipe, split_step=2, link=sl.Link())
out = split("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
ref = pipe("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
assert (out.images == ref).all(), "split image differs from the pipeline's"
codec = sl.SeedCodec.from_pretrained("seed-codec") if hasattr(sl.SeedCodec, "from_pretrained") else sl.SeedCodec.load(sl.zoo.resolve("seed-codec"))
link = sl.Link([codec, sl.AWGN(snr_db=10.0)])
payload = split.edge("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
received = link(payload, generator=torch.Generator().manual_seed(1))
images = split.device(received, output_type="np")
assert images.shape == ref.shape and torch.isfinite(torch.as_tensor(images)).all()
print(f"[wheel] generated {images.shape} through the shipped codec over AWGN 10 dB; import from {pathlib.Path(sl.__file__).parent}")
PY
echo "[wheel] smoke test passed"
