"""Optional lightweight refinement: tune the K identity tokens on the person's own photos.

Only the tokens [1, K, token_dim] are optimised (AdamW), starting from the projector's output;
the backbone and the identity module stay frozen. The loss is UniDiffuser's text-to-image
denoising loss: pretraining's objective (encoder.objective, without condition dropout), with the
caption "a photo of a <class word>". The photos are cropped as pretraining's (encoder.crop: the
largest square, centred on the face).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from encoder.crop import face_crop
from encoder.id_uvit import IDConditionedUViT
from encoder.objective import LossConfig, noise_prediction_loss
from encoder.photos import load_rgb
from models.pixels import to_signed


@dataclass(frozen=True)
class RefineOptions:
    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 4
    seed: int = 0
    caption: str = "a photo of a {class_word}"
    # pretraining's objective with every condition kept (dropping the identity gives the tokens no gradient)
    objective: LossConfig = LossConfig(p_drop_id=0.0, p_drop_text=0.0, p_drop_both=0.0)


def photo_crops(record, size: int, downsample: int) -> tuple[np.ndarray, torch.Tensor]:
    """The record's photos cropped as pretraining's (encoder.crop.face_crop).

    Returns (crops [N, size, size, 3] uint8, face boxes [N, 4] float32 in latent pixels).
    """
    crops, boxes = zip(*(face_crop(load_rgb(p.file), p.box, size) for p in record.photos), strict=True)
    return np.stack(crops), torch.from_numpy(np.stack(boxes)) / downsample


def refine_tokens(net: IDConditionedUViT, tokens: torch.Tensor, moments: torch.Tensor, clip_embeds: torch.Tensor,
                  boxes: torch.Tensor, text: torch.Tensor, schedule, opts: RefineOptions, *,
                  latent_scale: float, progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Optimise tokens [1, K, D] with encoder.objective's loss on the person's N photos.

    moments [N, 2C, h, w] (their VAE moments), clip_embeds [N, Dc] (their image-CLIP embeddings),
    boxes [N, 4] (the face in latent pixels), text [1, L, Dt] (the caption's features), on one
    device. Each step draws batch_size of the photos. Returns (refined tokens [K, D], loss per step).
    """
    device = moments.device
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    param = torch.nn.Parameter(tokens.detach().clone().float())
    opt = torch.optim.AdamW([param], lr=opts.lr, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def predict(z_n, clip_n, text, t_img, t_text, data_type, id_scale):
        with autocast:
            eps_z, eps_c, _ = net(z_n, clip_n, text, t_img, t_text, data_type, id_tokens=param, id_scale=id_scale)
        return eps_z, eps_c

    losses = []
    for _ in tqdm(range(opts.steps), desc="refine", disable=not progress):
        idx = torch.randint(0, moments.shape[0], (opts.batch_size,), generator=gen, device=device)
        loss, _ = noise_prediction_loss(predict, moments[idx], clip_embeds[idx], text.expand(len(idx), -1, -1),
                                        schedule, opts.objective, gen, box=boxes[idx], latent_scale=latent_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
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
    crops, boxes = photo_crops(record, pipe.image_size, pipe.autoencoder.config.downsample_factor)
    images = to_signed(crops).to(device)
    with torch.no_grad():
        moments = pipe.autoencoder.encode_moments(images)
        clip_embeds = image_clip.embed_images([Image.fromarray(c) for c in crops]).float().to(device)
        tokens = module.tokens_from_photos(record.embeddings.to(device), record.embeddings_flip.to(device))
        text = pipe.encode_text([opts.caption.format(class_word=record.class_word)])
    refined, losses = refine_tokens(net, tokens, moments, clip_embeds, boxes.to(device), text, pipe.schedule, opts,
                                    latent_scale=pipe.autoencoder.config.scale_factor, progress=progress)
    record.tokens = refined.cpu()
    record.refine = {**asdict(opts), "losses": losses}
