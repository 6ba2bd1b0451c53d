#!/usr/bin/env bash
# Reproduces the embedded default checkpoint (src/synfer_diffusers/default_model) on FaceWorld, on a CPU:
#
#   examples/train_faceworld_default.sh [RUN_DIR]        # default RUN_DIR: runs
#
# Stages (each resumes after a kill: rerun the same command; finished data and classifier stages are skipped):
#   1. FaceWorld train/test splits              6. guide classifier for semantic guidance (4-stage ResNet, seed 2)
#   2. judge + AU regressor (measurement only)  7. AU estimator for edits without source AUs (4-stage ResNet, seed 3)
#   3. autoencoder 64 -> 32x32x4, gated         8. FERAnno head on the stage-B UNet
#   4. stage A: text-to-image from scratch      9. evaluation on FaceWorld, then assembly into the package
#   5. stage B: AU adapter on the frozen stage-A UNet   10. independent voter (RegNet) on FaceWorld seed 2
#  5b. stage B continued at a lower learning rate (the AU-control lever that won: issue 27, README's AU ablation)
# Longer training: raise STAGE_A_STEPS / STAGE_B_STEPS / STAGE_B_LONG_STEPS (stages resume from their last checkpoint).
# Run one torch job at a time on a 2-core machine: two concurrent jobs slow each other several-fold.
set -euo pipefail
RUN=${1:-runs}
PYTHON=${PYTHON:-python}
STAGE_A_STEPS=${STAGE_A_STEPS:-3000}
STAGE_B_STEPS=${STAGE_B_STEPS:-2000}
STAGE_B_LONG_STEPS=${STAGE_B_LONG_STEPS:-8000}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

unless_exists() {  # unless_exists PATH COMMAND...: run COMMAND only if PATH does not exist yet
    local marker=$1
    shift
    if [ -e "$marker" ]; then echo "== skip (exists: $marker)"; else echo "== $*"; "$@"; fi
}

unless_exists "$RUN/faceworld/README.md" \
    $PYTHON -m synfer_diffusers.cli faceworld --output-dir "$RUN/faceworld" --num-train 20000 --num-test 2000 --seed 0
unless_exists "$RUN/judge/metrics.json" \
    $PYTHON examples/train_fer_classifier.py --dataset_name "$RUN/faceworld" --output_dir "$RUN/judge" \
    --task expression --architecture resnet --max_train_steps 1500 --seed 0
unless_exists "$RUN/au_regressor/metrics.json" \
    $PYTHON examples/train_fer_classifier.py --dataset_name "$RUN/faceworld" --output_dir "$RUN/au_regressor" \
    --task action_units --architecture resnet --max_train_steps 1500 --seed 1

$PYTHON examples/train_autoencoder.py --dataset_name "$RUN/faceworld" --output_dir "$RUN/vae" \
    --block_out_channels 16 32 --layers_per_block 1 --norm_num_groups 8 --train_batch_size 16 \
    --learning_rate 1e-3 --lr_warmup_steps 20 --edge_loss_weight 0.5 --max_train_steps 1600 \
    --checkpointing_steps 200 --validation_steps 5000 --resume_from_checkpoint latest \
    --judge_path "$RUN/judge" --au_regressor_path "$RUN/au_regressor" --label_column clean_label
$PYTHON -c "import json, sys; gate = json.load(open('$RUN/vae/gate.json')); print(gate); sys.exit(0 if gate['passed'] else 'autoencoder gate failed')"

$PYTHON examples/train_text_to_image.py --dataset_name "$RUN/faceworld" --vae_path "$RUN/vae" \
    --output_dir "$RUN/stage_a" --resolution 64 --max_text_length 48 --train_text_encoder \
    --unet_block_out_channels 32 64 128 --train_batch_size 32 --learning_rate 5e-4 --lr_warmup_steps 100 \
    --snr_gamma 5.0 --max_train_steps "$STAGE_A_STEPS" --checkpointing_steps 250 --validation_steps 1000 \
    --use_ema --ema_decay 0.995 --resume_from_checkpoint latest

$PYTHON examples/train_au_adapter.py --pretrained_model_name_or_path "$RUN/stage_a" --dataset_name "$RUN/faceworld" \
    --output_dir "$RUN/stage_b" --resolution 64 --train_batch_size 32 --learning_rate 5e-4 --lr_warmup_steps 50 \
    --max_train_steps "$STAGE_B_STEPS" --checkpointing_steps 250 --validation_steps 1000 --resume_from_checkpoint latest

$PYTHON examples/train_au_adapter.py --pretrained_model_name_or_path "$RUN/stage_b" --continue_adapter \
    --dataset_name "$RUN/faceworld" --output_dir "$RUN/stage_b_long" --resolution 64 --train_batch_size 32 \
    --learning_rate 2e-4 --lr_warmup_steps 20 --max_train_steps "$STAGE_B_LONG_STEPS" --cache_latents \
    --checkpointing_steps 250 --validation_steps 100000 --resume_from_checkpoint latest

unless_exists "$RUN/guide/metrics.json" \
    $PYTHON examples/train_fer_classifier.py --dataset_name "$RUN/faceworld" --output_dir "$RUN/guide" \
    --task expression --architecture resnet --hidden_sizes 16 32 64 128 --depths 1 1 1 1 --max_train_steps 1500 --seed 2
unless_exists "$RUN/au_estimator/metrics.json" \
    $PYTHON examples/train_fer_classifier.py --dataset_name "$RUN/faceworld" --output_dir "$RUN/au_estimator" \
    --task action_units --architecture resnet --hidden_sizes 16 32 64 128 --depths 1 1 1 1 --max_train_steps 1500 \
    --train_batch_size 64 --max_test_samples 500 --seed 3

$PYTHON examples/train_feranno.py --pretrained_model "$RUN/stage_b_long" --dataset_name "$RUN/faceworld" \
    --output_dir "$RUN/feranno" --label_column label --train_batch_size 32 --learning_rate 3e-4 \
    --max_train_steps 600 --checkpointing_steps 200 --max_eval_samples 1000 --resume_from_checkpoint latest

$PYTHON benchmarks/eval_faceworld_generation.py --model "$RUN/stage_b_long" --text-only "$RUN/stage_a" \
    --guide "$RUN/guide" --feranno "$RUN/feranno" --semantic-guidance-scale "${SG_SCALE:-12.0}" --judge "$RUN/judge" \
    --au-regressor "$RUN/au_regressor" --faceworld "$RUN/faceworld" --json "$RUN/eval/generation.json"

$PYTHON examples/assemble_default_model.py --pipeline "$RUN/stage_b_long" --guide "$RUN/guide" --feranno "$RUN/feranno" \
    --au_estimator "$RUN/au_estimator" --evaluation "$RUN/eval/generation.json" --output_dir src/synfer_diffusers/default_model

# An independent voter for `synfer generate`: another model family (RegNet) than the ResNet guide and the suite's
# ResNet and MobileNetV2 judges, trained on FaceWorld seed 2 (its identities and faces: neither the generator's seed 0
# nor the second judge's seed 1), so guided sets get a vote that can overrule the target.
unless_exists "$RUN/faceworld_seed2/README.md" \
    $PYTHON -m synfer_diffusers.cli faceworld --output-dir "$RUN/faceworld_seed2" --num-train 20000 --num-test 2000 --seed 2
unless_exists "$RUN/voter_regnet/metrics.json" \
    $PYTHON examples/train_fer_classifier.py --dataset_name "$RUN/faceworld_seed2" --output_dir "$RUN/voter_regnet" \
    --task expression --architecture regnet --max_train_steps 1500 --seed 4
$PYTHON examples/assemble_default_model.py --add_voter "regnet=$RUN/voter_regnet" --output_dir src/synfer_diffusers/default_model
