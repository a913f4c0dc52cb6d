"""Pictures: where each model looks (attention maps), and what a trigger does to images.

Plots use matplotlib's non-interactive Agg backend, so they work with no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torch.nn import functional as F

from nad.attention import FeatureHooks
from nad.io import atomic_path
from nad.models.checkpoint import Classifier
from nad.scan import ScanResult, describe_tone, tones, warp_field


@torch.inference_mode()
def attention_maps(clf: Classifier, x: Tensor, layers: Sequence[str], p: float = 2.0) -> tuple[list[Tensor], Tensor]:
    """Per layer, the channel-pooled |F|^p upsampled to the image size and scaled to [0, 1]; and predictions."""
    clf.module.eval()
    with FeatureHooks(clf.module, layers) as hooks:
        preds = clf(x).argmax(1)
        feats = hooks.take()
    maps = []
    for f in feats:
        a = f.float().abs().pow(p).sum(1, keepdim=True)
        a = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        lo = a.flatten(1).min(1).values.view(-1, 1, 1)
        hi = a.flatten(1).max(1).values.view(-1, 1, 1)
        maps.append((a - lo) / (hi - lo).clamp_min(1e-12))
    return maps, preds


def attention_figure(
    models: Sequence[tuple[str, Classifier, Sequence[str]]],
    clean: Tensor,
    triggered: Tensor,
    out: str | Path,
    class_names: Sequence[str] | None = None,
) -> Path:
    """One PNG: columns are clean then triggered images; rows, per model and layer, the attention overlay.

    ``models`` holds ``(name, classifier, layers)``. Every cell is titled with that model's prediction.
    """
    images = torch.cat([clean, triggered]).cpu()
    n = len(images)
    rows = 1 + sum(len(layers) for _, _, layers in models)
    fig, axes = plt.subplots(rows, n, figsize=(1.3 * n + 1.6, 1.35 * rows + 0.4), squeeze=False)
    show = images.permute(0, 2, 3, 1).float().div(255).numpy()
    cmap_img = "gray" if show.shape[-1] == 1 else None
    show = show[..., 0] if show.shape[-1] == 1 else show
    for j in range(n):
        axes[0, j].imshow(show[j], cmap=cmap_img, vmin=0, vmax=1)
        axes[0, j].set_title("clean" if j < len(clean) else "triggered", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8, rotation=0, ha="right", va="center")
    row = 1
    overlay = None
    for name, clf, layers in models:
        device = next(clf.module.parameters()).device
        maps, preds = attention_maps(clf, images.to(device), layers)
        for layer, amap in zip(layers, maps):
            for j in range(n):
                ax = axes[row, j]
                ax.imshow(show[j], cmap=cmap_img, vmin=0, vmax=1)
                overlay = ax.imshow(amap[j].cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                label = int(preds[j])
                ax.set_title(f"pred {class_names[label] if class_names else label}", fontsize=7)
            axes[row, 0].set_ylabel(f"{name}\n{layer}", fontsize=8, rotation=0, ha="right", va="center")
            row += 1
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if overlay is not None:  # the maps are scaled to [0, 1] per image: the bar reads the same for every cell
        fig.colorbar(overlay, ax=axes[1:, :].ravel().tolist(), fraction=0.02, pad=0.01, label="attention (scaled)")
    return save_figure(fig, out)


def save_figure(fig: plt.Figure, out: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and release it."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def residual(clean: Tensor, poisoned: Tensor) -> tuple[Tensor, Tensor]:
    """``|poisoned - clean|`` per image scaled to its own maximum (float [0, 1]), and that maximum (0..255)."""
    diff = (poisoned.float() - clean.float()).abs()
    peak = diff.flatten(1).max(1).values if len(diff) else torch.zeros(0)
    return diff / peak.clamp_min(1).view(-1, 1, 1, 1), peak


def attack_figure(
    clean: Tensor,
    poisoned: Sequence[tuple[str, Tensor]],
    out: str | Path,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """One PNG, a row per image: the clean image, each poisoned version (``(name, uint8 batch)``), then
    ``|first poisoned - clean|`` magnified to its own maximum (the cell's title gives that maximum, 0..255)."""
    images = [clean.cpu(), *(x.cpu() for _, x in poisoned)]
    diff, peak = residual(images[0], images[1])
    names = ["clean", *(name for name, _ in poisoned), f"|{poisoned[0][0]} - clean|"]
    n, cols = len(clean), len(images) + 1
    fig, axes = plt.subplots(n, cols, figsize=(1.45 * cols + 0.9, 1.45 * n + 0.5), squeeze=False)
    panels = [x.float().div(255) for x in images] + [diff]
    grey = clean.shape[1] == 1
    for j, panel in enumerate(panels):
        show = panel.permute(0, 2, 3, 1).numpy()
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(show[i, ..., 0] if grey else show[i], cmap="gray" if grey else None, vmin=0, vmax=1)
            label = names[j] if i == 0 else ""
            if j == cols - 1:
                label = f"{label}\nmax {int(peak[i])}/255" if label else f"max {int(peak[i])}/255"
            ax.set_title(label, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels is not None and j == 0:
            for i, text in enumerate(row_labels):
                axes[i, 0].set_ylabel(text, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def evidence_panels(result: ScanResult, target: int) -> list[tuple[str, Tensor]]:
    """The pictures of what made the scan flag class ``target``, by title: the inverted trigger (``mask``,
    ``pattern``, ``mask x pattern``) where trigger inversion flagged it, the ``universal perturbation`` (scaled
    to its largest value) where that did, the ``warp``'s control offsets where the warp did. A measure with no
    picture (the neuron perturbation, the stripes) is named in the figure's title only; where the tone and the
    stripes flagged it, the tone found (grey: zero); where no measure with a picture flagged the class, the
    inverted trigger is drawn, for reference."""
    evidence = result.evidence(target)
    panels = []
    if "trigger inversion" in evidence or not {"universal perturbation", "warp", "tone and stripes"} & evidence.keys():
        mask, pattern = result.masks[target].float().squeeze(0), result.patterns[target].float()
        stamped = (pattern * mask).permute(1, 2, 0).squeeze(-1)
        panels += [("mask", mask), ("pattern", pattern.permute(1, 2, 0).squeeze(-1)), ("mask x pattern", stamped)]
    if "universal perturbation" in evidence:
        delta = result.perturbations[target].float()
        scaled = 0.5 + 0.5 * delta / delta.abs().max().clamp_min(1e-12)
        panels.append(("universal perturbation", scaled.permute(1, 2, 0).squeeze(-1)))
    if "warp" in evidence:
        panels.append(("warp", result.warps[target]))
    if "tone and stripes" in evidence:
        h, w = result.masks.shape[-2:]
        tone = tones(h, w, 1.0)[result.tone_best[target]]  # in [-1, 1]
        panels.append((f"tone: {describe_tone(result.tone_best[target], h, w)}", 0.5 + 0.5 * tone[0]))
    return panels


def evidence_figure(result: ScanResult, target: int, out: str | Path) -> Path:
    """:func:`evidence_panels` in one row, titled with the measures that flagged ``target`` and their indices."""
    panels = evidence_panels(result, target)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 2.5 * len(panels)), 3.2), squeeze=False)
    for ax, (title, image) in zip(axes[0], panels):
        if title == "warp":
            draw_warp(ax, image, result.masks.shape[-2:])
        else:
            ax.imshow(image.numpy(), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title)
        ax.axis("off")
    named = ", ".join(f"{name} {index:.1f}" for name, index in result.evidence(target).items()) or "none"
    fig.suptitle(f"class {target}, anomaly index by\n{named}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.86))  # room for the two-line title above the panels' own
    return save_figure(fig, out)


def draw_warp(ax: plt.Axes, offsets: Tensor, size: torch.Size) -> None:
    """The displacement of a warp's control offsets (2, g, g) over an image of ``size``: its length in pixels
    as a shade, and arrows (lengthened to be seen) on an 8 x 8 grid."""
    h, w = size
    field = warp_field(offsets[None].float(), h, w)[0]  # (H, W, 2), pixels
    ax.imshow(field.norm(dim=-1).numpy(), cmap="magma", vmin=0)
    step = max(1, h // 8)
    ys, xs = torch.meshgrid(torch.arange(0, h, step), torch.arange(0, w, step), indexing="ij")
    arrows = field[::step, ::step]
    ax.quiver(xs.numpy(), ys.numpy(), arrows[..., 0].numpy(), arrows[..., 1].numpy(), color="cyan", angles="xy")
    ax.set_title(f"warp (up to {float(field.abs().max()):.2f} px)")
