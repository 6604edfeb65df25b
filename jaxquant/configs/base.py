"""Every key a run understands, with its default. Configs start from `base_config()`.

The keys every method shares are here; each method's own keys are its section,
``config.<method>.<key>`` (``config.mbquant.selection``, ``config.binreg.lambda_``), whose
defaults the method's file defines (`jaxquant.methods.Method.section`)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "anyprecision"  # anyprecision | lsq | binreg | vertical | mbquant
    # digits | mnist | fashion_mnist | cifar10 | cifar100 (in memory) | imagenet2012 (streamed)
    c.dataset = "digits"
    c.data_dir = ""  # tfds data_dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.augment = "none"  # none | crop | crop_flip (on device, inside the step)
    c.crop_padding = 4
    # streamed datasets (imagenet2012): RandomResizedCrop side; evaluation resizes to
    # size*256/224 and centre-crops
    c.image_size = 224
    c.data_workers = 8  # streamed datasets: host threads that decode and augment
    c.model = "small_cnn"  # small_cnn | resnet20 | resnet32 | resnet18 | resnet34 | mobilenet_v2
    # width multiplier: CIFAR ResNet (a whole number; Any-Precision uses 5), MobileNetV2 (any,
    # e.g. 0.75)
    c.width = 1.0
    c.widths = (32, 64, 64)  # SmallCNN: stem width, then one quantized conv per entry
    c.stem_pool = False  # SmallCNN: 2x2 max-pool after the stem (28x28 inputs)
    c.preactivation = False  # CIFAR ResNet: Any-Precision's pre-activation blocks
    c.quantize_shortcut = False  # quantize 1x1 projection shortcuts
    c.first_last_bits = 0  # 0: FP stem conv and classifier; else their fixed bit-width
    c.per_channel = False  # LSQ / vertical: one weight step per output channel
    # compute dtype: float32 | bfloat16 (convs, matmuls, activations; params, optimizer state,
    # loss stay float32; bf16 needs bits <= 8)
    c.dtype = "float32"
    # auto (CPU: unroll, GPU/TPU: native) | unroll (one plain conv per precision under vmap) |
    # native (XLA's: one grouped conv for all P)
    c.conv_batching = "auto"
    # auto (CPU: im2col, GPU/TPU: xla) | im2col | xla: conv weight gradients
    c.conv_weight_gradient = "auto"
    c.bits = (2, 4, 8, 32)  # the precisions trained together (32 = full precision)
    # auto (the method's: mbquant largest, anyprecision recursive, else none) | none | largest |
    # recursive
    c.distillation = "auto"
    c.loss_weights = ()  # lambda_b per bit-width; () = all ones
    # auto (mbquant: unroll; others: unroll on CPU, vmap on GPU/TPU) | vmap | unroll
    c.precision_mode = "auto"
    c.epochs = 10
    c.batch_size = 128  # global batch, split over all devices
    c.eval_batch_size = 500
    c.seed = 0
    c.checkpoint_every_steps = 500  # saved asynchronously (written while training goes on)
    # the loss and accuracies reach the host (progress bar, NaN check) this often
    c.log_every_steps = 50
    c.keep_checkpoints = 3
    # test accuracy per bit-width every N epochs, in metrics.jsonl and TensorBoard (0: never)
    c.eval_every_epochs = 1
    # fine-tune: start from a trained run's weights and BatchNorm (a workdir or a
    # checkpoints/STEP folder; quantizer steps re-initialised from them); "" = from scratch
    c.init_from = ""
    c.init_from_bn_batches = 50  # fine-tuning: BatchNorm re-estimated over N training batches
    c.multihost = False  # call jax.distributed.initialize() (multi-host TPU pods)
    o = c.optimizer = ml_collections.ConfigDict()
    o.optimizer = "sgd"  # model weights: sgd | adam
    o.learning_rate = 0.1
    o.momentum = 0.9
    o.nesterov = False
    o.weight_decay = 1e-4
    # ((bits, decay), ...): the decay of a run at one bit-width, e.g. BR's ((2, 2.5e-5), (3, 5e-5),
    # (4, 1e-4)); () = weight_decay
    o.weight_decay_by_bits = ()
    o.decay_batchnorm = True
    # fnmatch patterns of parameter paths ("layer/.../name") without weight decay, e.g.
    # ("*_dw/kernel",) (MBQuant's MobileNetV1 depthwise kernels); () = decay every model weight
    o.no_decay = ()
    o.schedule = "cosine"  # cosine | constant | step
    o.per_epoch_schedule = False
    o.warmup_epochs = 0.0
    o.step_epochs = ()
    o.step_factor = 0.1
    o.quantizer_optimizer = "adam"  # quantizer parameters (LSQ steps, intervals)
    o.quantizer_learning_rate = 1e-3
    o.quantizer_schedule = "cosine"
    # Each registered method's section (function-local import: the methods register on import).
    from jaxquant.methods import METHODS

    for method in METHODS.values():
        if method.section:
            c[method.name] = ml_collections.ConfigDict(dict(method.section))
    return c
