#!/usr/bin/env bash
# The GPU checks of multi-GPU correctness and speed, on one CUDA GPU (about 6-8 minutes on an H200):
#   bash benchmarks/gpu_check.sh [out_dir]          # default: gpu_check_out/
# 1. ViT-B/16 bare training step against Trainer.fit on in-memory images, bf16 + torch.compile, MFU
#    (benchmarks/gpu_throughput.py).
# 2. ViT-B/16 `fit` through the CLI on a labelled JPEG folder (written here), bf16 + compile, tensor decoding,
#    with the kNN/online-probe and reconstruction monitors on: images/s, peak memory.
#    Then the same with `decode: gpu` (nvJPEG decoding and crops on the GPU), against the tensor decoding.
# 3. ViT-L/16 under configs/presets/fsdp.yaml on the one GPU, monitors on: it must finish (a hang is a
#    failure: every step has a timeout), images/s, peak memory; then `predict` of its checkpoint under FSDP.
# Results: <out_dir>/summary.json and the logs beside it. SMOKE=1 runs the same commands on the CPU with
# small images and two FSDP processes (tests/cli_plugins.CPUFSDPStrategy): a check of this script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu_check_out}")
data="$out/images"
mkdir -p "$out"
export PYTHONPATH="$PWD/benchmarks:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"

if [ "${SMOKE:-0}" = 1 ]; then
    steps=3
    every=1
    # Epochs of 2 steps, so that the monitors run within the 3 steps.
    hardware=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true --trainer.limit_train_batches 2
              --data.init_args.img_size 64 --data.init_args.num_workers 0 --data.init_args.batch_size 8)
    # The preset's strategy settings, on Lightning's FSDP let onto the CPU.
    fsdp=(--trainer.strategy.class_path cli_plugins.CPUFSDPStrategy --trainer.devices 2
          --model.init_args.fused_adamw false)
    compile=false
    python benchmarks/gpu_check_tools.py images "$data" --per-class 32 --size 72
else
    steps=40
    every=5
    hardware=(--trainer.devices 1 --data.init_args.num_workers 12 --data.init_args.decode tensor)
    fsdp=(--trainer.devices 1)
    compile=true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    timeout 300 python benchmarks/gpu_throughput.py --steps 30 2>&1 | tee "$out/throughput.txt"
    python benchmarks/gpu_check_tools.py images "$data" --per-class 512 --size 256
fi

# The monitors as the shipped configs have them (2 classes here), peak memory, and one checkpoint at the end.
callbacks() {  # $1: run name
    cat <<EOF
[{"class_path": "mae_lightning.KNNMonitor", "init_args": {"num_classes": 2}},
 {"class_path": "mae_lightning.ReconstructionCallback", "init_args": {"every_n_epochs": 1}},
 {"class_path": "gpu_check_tools.PeakMemory", "init_args": {"path": "$out/$1/memory.json"}},
 {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "$out/$1/checkpoints", "save_last": true}}]
EOF
}
run() {  # $1: run name, then the configs and overrides
    local name=$1
    shift
    timeout 300 python -m mae_lightning fit "$@" --data.init_args.root "$data" "${hardware[@]}" \
        --trainer.default_root_dir "$out/$name" \
        --trainer.num_nodes 1 --trainer.accumulate_grad_batches 1 --trainer.max_steps "$steps" \
        --trainer.log_every_n_steps "$every" --trainer.limit_val_batches 2 --trainer.enable_progress_bar false \
        --trainer.logger '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "'"$out"'", "name": "'"$name"'"}}' \
        --trainer.callbacks "$(callbacks "$name")" 2>&1 | tee "$out/$name.log"
}

run vit_base_bf16_compile --config configs/imagenet/pretrain.yaml --config configs/imagenet/pretrain_vit_base.yaml --model.init_args.compile "$compile"
if [ "${SMOKE:-0}" != 1 ]; then
    # The same run with nvJPEG decoding and the crops on the GPU (the workers only read bytes): images/s against
    # the tensor-decoding run above.
    run vit_base_gpu_decode --config configs/imagenet/pretrain.yaml --config configs/imagenet/pretrain_vit_base.yaml --model.init_args.compile "$compile" \
        --data.init_args.decode gpu
fi
run vit_large_fsdp --config configs/imagenet/pretrain.yaml --config configs/imagenet/pretrain_vit_large.yaml --config configs/presets/fsdp.yaml "${fsdp[@]}"

# predict under FSDP from the FSDP checkpoint: one embeddings file gathered on rank 0, the reconstruction grid.
timeout 300 python -m mae_lightning predict --config configs/imagenet/pretrain.yaml --config configs/imagenet/pretrain_vit_large.yaml --config configs/presets/fsdp.yaml \
    --data.init_args.root "$data" "${hardware[@]}" "${fsdp[@]}" --trainer.num_nodes 1 --trainer.logger false \
    --trainer.default_root_dir "$out/predict" \
    --trainer.limit_predict_batches 2 --trainer.enable_progress_bar false \
    --trainer.callbacks '[{"class_path": "mae_lightning.EmbeddingWriter", "init_args": {"path": "'"$out"'/predict/embeddings.npz"}},
                          {"class_path": "mae_lightning.ReconstructionCallback", "init_args": {"dirpath": "'"$out"'/predict"}}]' \
    --ckpt_path "$out/vit_large_fsdp/checkpoints/last.ckpt" 2>&1 | tee "$out/predict.log"
python -c "import numpy; e = numpy.load('$out/predict/embeddings.npz'); print('predict rows', len(e['index']), 'cls', e['cls'].shape)" \
    | tee -a "$out/predict.log"

python benchmarks/gpu_check_tools.py summary "$out"
