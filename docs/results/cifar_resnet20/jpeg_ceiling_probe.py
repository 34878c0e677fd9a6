"""How far can ResNet-20 get on these JPEG files? A probe, measured 2026-12-01 on the 2-core AMD EPYC (bf16).

The published akamaster ResNet-20 (200 epochs on the original CIFAR-10 images, 91.78 % there) scores 81.03 % on
../shared/data/cifar10's q75 JPEG test images. Fine-tuning it on the JPEG training images for 3 epochs (SGD
Nesterov, lr 0.02 cosine to 0, wd 1e-4, batch 128, pad-4 crop (one offset per batch) + per-image flip, bf16
autocast) gave, on all 10,000 JPEG test images (bf16 eval):

    start 81.03 %   epoch 1 85.49 %   epoch 2 87.73 %   epoch 3 88.09 %

so a full-schedule ResNet-20 that has adapted to the artefacts sits near 88 %, about 3.7 points under its
clean-image accuracy: the JPEG q75 / 4:2:0 chroma copy loses information a 0.27 M-parameter net cannot recover.
Run from the repo root: python docs/results/cifar_resnet20/jpeg_ceiling_probe.py   (about 3 minutes)
"""
import time, math, torch, numpy as np, torch.nn.functional as F
import resbackbones as rb
from resbackbones.data import ImageFolderDataset
from resbackbones.weights import load
from resbackbones.weights.convert_cifar import from_cifar_checkpoint, CIFAR_PREPROCESSING
torch.set_num_threads(2); torch.manual_seed(0)
def tensors(path):
    ds = ImageFolderDataset(path)
    imgs = np.stack([ds[i][0] for i in range(len(ds))])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(CIFAR_PREPROCESSING["mean"]).view(1,3,1,1); s = torch.tensor(CIFAR_PREPROCESSING["std"]).view(1,3,1,1)
    return ((x - m) / s), torch.tensor(ds.targets)
xtr, ytr = tensors("../shared/data/cifar10/train.tar"); xte, yte = tensors("../shared/data/cifar10/test.tar")
model = rb.build_classifier("cifar_resnet20", num_classes=10)
model.load_state_dict(from_cifar_checkpoint(load("../shared/weights/cifar10/resnet20-12fca82f.th")))
model = model.to(memory_format=torch.channels_last)
def evaluate():
    model.eval(); c = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, 10000, 500):
            c += (model(xte[i:i+500].contiguous(memory_format=torch.channels_last)).argmax(1) == yte[i:i+500]).sum().item()
    return c / 100
print("start", evaluate(), flush=True)
epochs = 3; bs = 128; ipe = 50000 // bs; total = epochs * ipe
opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4, nesterov=True)
it = 0
for ep in range(epochs):
    model.train(); perm = torch.randperm(50000); t0 = time.time()
    for b in range(ipe):
        idx = perm[b*bs:(b+1)*bs]; x = xtr[idx]
        # pad-crop-flip
        x = F.pad(x, (4,4,4,4)); dx, dy = np.random.randint(0, 9, 2); x = x[:, :, dy:dy+32, dx:dx+32]
        flip = torch.rand(bs) < 0.5; x[flip] = x[flip].flip(3)
        for g in opt.param_groups: g["lr"] = 0.02 * 0.5 * (1 + math.cos(math.pi * it / total))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(out.float(), ytr[idx]); opt.zero_grad(); loss.backward(); opt.step(); it += 1
    print("epoch", ep, f"{time.time()-t0:.0f}s", evaluate(), flush=True)
