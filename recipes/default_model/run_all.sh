#!/usr/bin/env bash
# The default model from nothing, on 2 CPU cores: data (~5 min), base training (~2.5 h), four LoRA
# realignments (~5 min each), shipping into the package, the WER table (~15 min).
#   bash recipes/default_model/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
recipe=recipes/default_model
python $recipe/make_data.py data
# Three stages, as the shipped model was made (each continues from the last with a fresh schedule):
# 1. CTC weight 0.3, 80% of clips augmented; stopped at step 1500 of 5000: the encoder learned slowly.
# 2. CTC weight 1.0, 50% augmented; stopped at step 2000 of 3500, once the CTC loss began to fall,
#    to give the rest of the session to a longer schedule.
# 3. The same settings over a fresh 4800-step schedule.
python $recipe/train_base.py --data data --out build/default-model/base-stage1 --steps 5000 --stop-after 1500
python $recipe/train_base.py --data data --out build/default-model/base-stage2 --init-from build/default-model/base-stage1/final \
  --steps 3500 --stop-after 2000 --warmup-steps 100 --ctc-weight 1.0 --augment-probability 0.5 --seed 1
python $recipe/train_base.py --data data --out build/default-model/base --init-from build/default-model/base-stage2/final \
  --steps 4800 --warmup-steps 100 --ctc-weight 1.0 --augment-probability 0.5 --seed 2
python $recipe/ship.py base build/default-model/base/final
for compressor in avg2 avg3 sample3 unseg; do
  name=${compressor%%[0-9]*}; factor=${compressor#"$name"}
  edgelalm finetune --data data --compressor "$name" ${factor:+--factor "$factor"} --steps 300 \
    --out build/default-model/adapters/$compressor --force
done
python $recipe/ship.py adapter build/default-model/adapters/{avg2,avg3,sample3,unseg}
python $recipe/wer_table.py --data data/test --out $recipe/results
python $recipe/plot_training.py build/default-model/base-stage1:1500 build/default-model/base-stage2:2000 build/default-model/base --out $recipe/results
