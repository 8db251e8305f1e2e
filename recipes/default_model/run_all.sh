#!/usr/bin/env bash
# The default model from nothing, on 2 CPU cores: data (~10 min), base training (~3 h), four LoRA
# realignments (~5 min each), shipping into the package, the WER table (~15 min).
#   bash recipes/default_model/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
recipe=recipes/default_model
# Stages 1-3 trained on grammar version 1 (30000 clips); stage 4 on version 2 (40000 clips, 233 more
# contact names and 117 more cities), whose test split is the held-out set of the WER table.
python $recipe/make_data.py data-v1 --grammar-version 1 --train-count 30000
python $recipe/make_data.py data
python $recipe/make_data.py data-seed1 --seed 1 --train-count 30000 --test-count 100
# Five stages, as the shipped model was made (each continues from the last with a fresh schedule):
# 1. CTC weight 0.3, 80% of clips augmented; stopped at step 1500 of 5000: the encoder learned slowly.
# 2. CTC weight 1.0, 50% augmented; stopped at step 2000 of 3500, once the CTC loss began to fall,
#    to give the rest of the session to a longer schedule.
# 3. The same settings over a fresh 4800-step schedule (the first shipped model: 14.2% WER on
#    grammar 1's test split). Its train loss had fallen far below its held-out loss, and most
#    held-out errors were names it had never heard, hence grammar 2:
# 4. from the shipped (fp16) stage-3 weights, the same settings over 4000 steps of grammar 2 data
#    (10.1% WER; its train loss again fell far below the held-out loss), then
# 5. from the shipped stage-4 weights, 1800 steps at half the peak learning rate over 30000 fresh
#    clips (seed 1), each seen about once.
python $recipe/train_base.py --data data-v1 --out build/default-model/base-stage1 --steps 5000 --stop-after 1500
python $recipe/train_base.py --data data-v1 --out build/default-model/base-stage2 --init-from build/default-model/base-stage1/final \
  --steps 3500 --stop-after 2000 --warmup-steps 100 --ctc-weight 1.0 --augment-probability 0.5 --seed 1
python $recipe/train_base.py --data data-v1 --out build/default-model/base-stage3 --init-from build/default-model/base-stage2/final \
  --steps 4800 --warmup-steps 100 --ctc-weight 1.0 --augment-probability 0.5 --seed 2
python $recipe/ship.py base build/default-model/base-stage3/final
python $recipe/train_base.py --data data --out build/default-model/base-stage4 --init-from src/edgelalm/default_model/edgelalm-default \
  --steps 4000 --warmup-steps 100 --ctc-weight 1.0 --augment-probability 0.5 --seed 3
python $recipe/ship.py base build/default-model/base-stage4/final
python $recipe/train_base.py --data data-seed1 --out build/default-model/base --init-from src/edgelalm/default_model/edgelalm-default \
  --steps 1800 --warmup-steps 100 --learning-rate 5e-4 --ctc-weight 1.0 --augment-probability 0.5 --seed 4
python $recipe/ship.py base build/default-model/base/final
for compressor in avg2 avg3 sample3 unseg; do
  name=${compressor%%[0-9]*}; factor=${compressor#"$name"}
  edgelalm finetune --data data --compressor "$name" ${factor:+--factor "$factor"} --steps 300 \
    --out build/default-model/adapters/$compressor --force
done
python $recipe/ship.py adapter build/default-model/adapters/{avg2,avg3,sample3,unseg}
for compressor in avg2 avg3 sample3 unseg; do  # each realignment's record, loss log and curve
  cp build/default-model/adapters/$compressor/edgelalm_finetune.json $recipe/results/lora-$compressor.json
  cp build/default-model/adapters/$compressor/train_log.jsonl $recipe/results/train_log_lora_$compressor.jsonl
  cp build/default-model/adapters/$compressor/loss.png $recipe/results/loss-lora-$compressor.png
done
python $recipe/wer_table.py --data data/test --out $recipe/results
python $recipe/plot_training.py build/default-model/base-stage1:1500 build/default-model/base-stage2:2000 \
  build/default-model/base-stage3 build/default-model/base-stage4 build/default-model/base --out $recipe/results
