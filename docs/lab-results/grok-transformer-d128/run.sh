# One device call: the GPU speed table (issue 4), then the grok full-preset transformer, bp vs pc (issue 5).
# Usage, from the repository root of a GPU machine: bash <this file> <commit>, with $OUT a folder for results.
set -u
START=$SECONDS
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PCLAB_COMMIT=$1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, sys; print('torch', torch.__version__, torch.cuda.is_available(), sys.version.split()[0])"
nproc
echo "== speed $(date -u +%FT%T)"
timeout 170 python3 benchmarks/speed.py --device cuda --rounds 5 --repeat 10 --json $OUT/speed-cuda.json > $OUT/speed.log 2>&1
echo "speed rc $? at $((SECONDS-START)) s"; tail -c 6000 $OUT/speed.log
echo "== calibrate $(date -u +%FT%T)"
PER_STEP=$(timeout 60 python3 "$(dirname "$0")/calibrate.py" 2>$OUT/calibrate.err | tail -1)
echo "pc step ${PER_STEP:-failed} s at $((SECONDS-START)) s"; tail -5 $OUT/calibrate.err
LEFT=$((545 - (SECONDS-START)))
# pc runs share the GPU three at a time (plus bp); 1.7x margin for that and for evaluation, startup
STEPS=$(python3 -c "import sys; s=float(sys.argv[1] or 0.2); print(max(300, min(5000, int(($LEFT-40)/(1.7*s))//100*100)))" "${PER_STEP:-}")
echo "== grok: $STEPS steps, $LEFT s left, $(date -u +%FT%T)"
timeout $((LEFT-15)) python3 -m pclab grok --fractions 0.5 --weight-decays 1 --num-seeds 3 --steps $STEPS --eval-every 100 --workers 6 --device cuda --no-progress --out /tmp/grok-transformer-d128 > $OUT/grok.log 2>&1
echo "grok rc $? at $((SECONDS-START)) s"; tail -c 3000 $OUT/grok.log
tar czf $OUT/grok-transformer-d128.tgz -C /tmp grok-transformer-d128
ls /tmp/grok-transformer-d128/runs | wc -l
echo "== done at $((SECONDS-START)) s"
