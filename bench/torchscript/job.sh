# Sourced by compare.sh and same_weights.sh: the one training job both compare models on.
# write_job FILE NAME SEED MODEL_LINES — Fashion-MNIST ($LIMIT training images, the first 2000
# test images), batch 128, SGD 0.9 at lr ${LR:-0.1} (LR=auto: the LR-range test picks it, the
# default suggestion rule), SGDR $EPOCHS cycles of 1 epoch, 2 threads on the CPU, the [model]
# section given by MODEL_LINES; stores under $WORK/store.
write_job() {
  local lr=${LR:-0.1} finder=""
  if [ "$lr" = auto ]; then lr='"auto"'; finder='[lr_find]'; fi
  cat > "$1" <<TOML
name = "$2"
seed = $3
output = "file://$WORK/store"
[data]
source = "fashion_mnist"
batch_size = 128
limit_train = $LIMIT
limit_eval = 2000
[model]
$4
[optimizer]
kind = "sgd"
momentum = 0.9
$finder
[[stage]]
lr = $lr
group_lrs = "same"
cycles = $EPOCHS
cycle_len = 1
[ensemble]
members = 3
selection = "last"
[checkpoint]
every_epochs = 0
[runtime]
threads = 2
device = "cpu"
TOML
}
