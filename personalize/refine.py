"""Optional lightweight refinement: tune the K identity tokens on the person's own photos.

Only the tokens [1, K, token_dim] are optimised (AdamW), starting from the projector's output;
the backbone and the identity module stay frozen. The loss is UniDiffuser's text-to-image
denoising loss (noise MSE on the latent and the image-CLIP token at random timesteps), with the
caption "a photo of a <class word>". The photos are cropped square around the face with margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from encoder.id_uvit import IDConditionedUViT
from encoder.photos import load_rgb


@dataclass(frozen=True)
class RefineOptions:
    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 4
    seed: int = 0
    face_margin: float = 1.6  # crop side = margin x the face box's longer side (capped by the photo)
    caption: str = "a photo of a {class_word}"


def face_crop(img: np.ndarray, box, size: int, margin: float) -> np.ndarray:
    """Square crop around the face box, scaled by margin and shifted to stay inside the photo.

    img [H, W, 3] uint8, box (x1, y1, x2, y2) -> [size, size, 3] uint8.
    """
    h, w = img.shape[:2]
    x1, y1, x2, y2 = box
    side = min(max(x2 - x1, y2 - y1) * margin, h, w)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = int(round(min(max(cx - side / 2, 0), w - side)))
    top = int(round(min(max(cy - side / 2, 0), h - side)))
    side = int(round(side))
    crop = Image.fromarray(img[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def refine_tokens(net: IDConditionedUViT, tokens: torch.Tensor, images: torch.Tensor, clip_embeds: torch.Tensor,
                  text: torch.Tensor, autoencoder, schedule, opts: RefineOptions,
                  progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Optimise tokens [1, K, D] on images [N, 3, S, S] in [-1, 1] with image-CLIP [N, 1, 512].

    text [1, n_text, text_dim]. Returns (refined tokens, loss per step).
    """
    device = images.device
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    with torch.no_grad():
        moments = autoencoder.encode_moments(images)
    param = torch.nn.Parameter(tokens.detach().clone().float())
    opt = torch.optim.AdamW([param], lr=opts.lr, weight_decay=0.0)
    losses = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for _ in tqdm(range(opts.steps), desc="refine", disable=not progress):
        idx = torch.randint(0, images.shape[0], (opts.batch_size,), generator=gen, device=device)
        with torch.no_grad():
            z0 = autoencoder.sample(moments[idx], generator=gen)
        clip0 = clip_embeds[idx]
        b = z0.shape[0]
        n = schedule.sample_timesteps(b, generator=gen, device=device)
        eps_z = torch.randn(z0.shape, generator=gen, device=device)
        eps_c = torch.randn(clip0.shape, generator=gen, device=device)
        z_n, c_n = schedule.add_noise(z0, eps_z, n), schedule.add_noise(clip0, eps_c, n)
        with autocast:
            pz, pc, _ = net(z_n, c_n, text.expand(b, -1, -1), n.float(), torch.zeros(b, device=device),
                            torch.ones(b, dtype=torch.long, device=device), id_tokens=param.expand(b, -1, -1))
        loss = F.mse_loss(pz.float(), eps_z) + F.mse_loss(pc.float(), eps_c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return param.detach()[0], losses


def refine_record(record, photo_dir, analyzer, *, weights=None, encoder=None, device=None,
                  allow_untrained=False, opts: RefineOptions, progress: bool = True,
                  image_clip=None) -> None:
    """Load the backbone and identity module, refine the record's tokens in place."""
    from models.image_clip import ImageCLIP
    from models.pipeline import UniDiffuserT2I
    from personalize.generate import find_identity_module, load_identity_module

    folder = find_identity_module(encoder, allow_untrained=allow_untrained)
    pipe = UniDiffuserT2I.from_pretrained(weights, device=device, dtype=torch.float32)
    module, _ = load_identity_module(folder, pipe.uvit.config)
    module = module.to(device).eval().requires_grad_(False)
    net = IDConditionedUViT(pipe.uvit.requires_grad_(False), module)
    if image_clip is None:
        image_clip = ImageCLIP.from_pretrained(weights, device=device)
    size = pipe.image_size
    crops = [face_crop(load_rgb(p.file), p.box, size, opts.face_margin) for p in record.photos]
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
    with torch.no_grad():
        clip_embeds = image_clip.embed_images([Image.fromarray(c) for c in crops]).float().to(device)[:, None]
        tokens = module.tokens_from_photos(record.embeddings.to(device), record.embeddings_flip.to(device))
        text = pipe.encode_text([opts.caption.format(class_word=record.class_word)])
    refined, losses = refine_tokens(net, tokens, images, clip_embeds, text, pipe.autoencoder, pipe.schedule,
                                    opts, progress=progress)
    record.tokens = refined.cpu()
    record.refine = {**asdict(opts), "losses": losses}
