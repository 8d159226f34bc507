#!/usr/bin/env bash
# GPU checks of issue 4, as one script for a lent GPU machine (see bench/RESULTS.md):
#   step cost (fp32, bf16, fp16) at the CamVid CPU setting and at the paper's VOC setting,
#   then the U2PL+ demo trained on CUDA with bf16 and with fp16 (GradScaler), evaluated.
# Usage: OUT=/some/dir bash bench/gpu_check.sh   (the packages of pyproject.toml importable)
set -u
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py -c "import torch, torchvision, timm, segmentation_models_pytorch as smp; print('torch', torch.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, 'smp', smp.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for amp in off bf16 fp16; do
  echo "== step cost, CamVid setting, amp=$amp"
  timeout 75 $py bench/step_cost.py --device cuda --amp $amp --steps 20 || echo "FAILED rc=$?"
done
for amp in off bf16; do
  echo "== step cost, VOC setting (ResNet-101, 513x513, 8+8), amp=$amp"
  timeout 100 $py bench/step_cost.py --device cuda --amp $amp --config configs/voc/_base.yaml \
    --crop 513 513 --batch 8 --steps 10 || echo "FAILED rc=$?"
done
for amp in bf16 fp16; do
  echo "== U2PL+ demo on CUDA, amp=$amp"
  timeout 120 $py -m u2plus train configs/demo/u2pl_plus.yaml train.amp=$amp data.num_workers=4 \
    out_dir="/tmp/demo_$amp" > "$OUT/demo_$amp.log" 2>&1; echo "rc=$?"
  tr '\r' '\n' < "$OUT/demo_$amp.log" | grep -v '^ *$' | grep -v 'it/s]$' | tail -12
done
