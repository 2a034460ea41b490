"""Train the smalldetail-llava checkpoint: a tiny LlavaForConditionalGeneration (CLIP vision
tower + Llama LM + projector, tokenizer trained locally) on the synthetic small-detail
benchmark (collab_eval.lab.smalldetail), on the CPU, reproducibly.

    python -m collab_eval.lab.train_smalldetail --out collab_eval/weights/smalldetail-llava

On the CPU (the default, 2 threads, deterministic algorithms) the same seed gives the same
weights. ``--device cuda`` runs too, without that promise; for a model this small it is
launch-bound (eight runs sharing one H200 made about 5 steps/s each, against 2.7 steps/s
for one run on 2 CPU cores).

Every training image is made by the edge functions the pipeline uses: the global view is
``collab_eval.edge.transmit`` of the LLaVA adapter's ``frame`` of the whole image; a local
view is ``transmit`` of ``frame`` of a square box built by ``collab_eval.roi.square_box``
(side 1-2x the input side in original pixels, as the RoI search makes them). Prompts are the
task prompts as lmms-eval renders them (its own doc_to_text functions), put through the
processor's chat template, with one image (stage 1) or two (stage 2: global then local).

The mixture, per step:
- one-image batch: reading and existence questions on the global view, and the generic
  description prompt (collab_eval.pipeline.GENERIC_PROMPT; no answer, attention loss only);
- two-image batch: reading and existence questions on [global, local], where the local crop
  contains the digit (80%) or is deliberately elsewhere (20%; the answer stays the truth).

Attention supervision (stated plainly): on one-image examples an auxiliary loss pulls the
head-averaged attention of the last prompt token to the image patches, at the layer the
adapter reads (depth * 14 // 32), toward the sign's patches for questions, and toward a flat
map for the generic prompt. The RoI the pipeline finds therefore comes from attention that
was trained to point at the target; this is a proxy for what pretraining gives real VLMs.
An auxiliary digit head (not saved) reads the digit from the projected patch features of
correct local crops and of global views where the digit is readable (>= 10 px tall).

Curriculum (adaptive, as the feasibility probe needed): local crops start with a window of
0.4x the input side (the sign fills the view) and the largest allowed window grows through
0.7, 1.0, 1.5 to 2x the input side whenever two-image reading accuracy on the running
batches exceeds 0.5; wrong local crops enter after the first level.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from collab_eval.lab import smalldetail as sd
from collab_eval.edge import Codec, transmit
from collab_eval.pipeline import GENERIC_PROMPT
from collab_eval.roi import square_box
from collab_eval.lab.tiny_checkpoints import LLAVA_CHAT_TEMPLATE, train_tokenizer

INPUT_SIDE = 96
PATCH = 12
GRID = INPUT_SIDE // PATCH
POST_PROMPT = "\nAnswer the question using a single word or phrase."
DIGITS = "0123456789"
CORPUS = [
    "USER: ASSISTANT: " + sd.READ_QUESTION.capitalize() + POST_PROMPT,
    *[sd.EXIST_QUESTION.format(digit=d) + POST_PROMPT for d in DIGITS],
    GENERIC_PROMPT, *[" yes no " + " ".join(DIGITS)] * 20,
]


def build_tokenizer():
    return train_tokenizer(["<image>"], vocab_size=512, corpus=CORPUS)


def build_config(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                              image_size=INPUT_SIDE, patch_size=PATCH, projection_dim=128)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def build_processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor
    image_processor = CLIPImageProcessor(size={"shortest_edge": INPUT_SIDE},
                                         crop_size={"height": INPUT_SIDE, "width": INPUT_SIDE},
                                         do_center_crop=True, do_resize=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_CHAT_TEMPLATE)


def attention_layer(config) -> int:
    """The layer the adapters read by default (ViCrop's 14 of 32, scaled)."""
    return config.text_config.num_hidden_layers * 14 // 32


# ----- views, made with the pipeline's own edge functions ---------------------------
CODEC = Codec("png")


def frame(region):
    from model_adapters.llava import llava_frame
    return llava_frame(region, crop=(INPUT_SIDE, INPUT_SIDE), shortest_edge=INPUT_SIDE)


def global_view(image):
    w, h = image.size
    region, size = frame((0.0, 0.0, float(w), float(h)))
    return transmit(image, region, size, CODEC).image, region


def box_target(box, region) -> np.ndarray:
    """GRID x GRID weights: the box's overlap with each patch of ``region``'s view."""
    x0, y0, x1, y1 = region
    cw, ch = (x1 - x0) / GRID, (y1 - y0) / GRID
    t = np.zeros((GRID, GRID))
    for j in range(GRID):
        for i in range(GRID):
            ox = max(0.0, min(box[2], x0 + (i + 1) * cw) - max(box[0], x0 + i * cw))
            oy = max(0.0, min(box[3], y0 + (j + 1) * ch) - max(box[1], y0 + j * ch))
            t[j, i] = ox * oy
    return t / t.sum() if t.sum() > 0 else np.full((GRID, GRID), 1 / GRID**2)


def local_box(rng: random.Random, sc: sd.Scene, ratio: float, good: bool):
    """A square box of side ratio * input side (original pixels), holding the digit or not."""
    w, h = sc.image.size
    side = INPUT_SIDE * ratio
    x0, y0, x1, y1 = sc.target_box
    for _ in range(50):
        if good:
            cx = rng.uniform(x1 - side / 2, x0 + side / 2)
            cy = rng.uniform(y1 - side / 2, y0 + side / 2)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        box = square_box(cx, cy, side, (w, h))
        inside = box[0] <= x0 and box[1] <= y0 and box[2] >= x1 and box[3] >= y1
        sx0, sy0, sx1, sy1 = sc.sign_box
        touches = not (box[2] <= sx0 or box[0] >= sx1 or box[3] <= sy0 or box[1] >= sy1)
        if (good and inside) or (not good and not touches):
            return box
    return None


# ----- data ----------------------------------------------------------------------
ZOOM_RATIOS = (0.4, 0.7, 1.0, 1.5, 2.0)  # curriculum: window side / input side, digit largest first
READABLE_PX = 10  # a digit at least this tall in the global view gets the digit head there too


def make_data(split: str, n: int, seed: int, processor, ratios=ZOOM_RATIOS):
    """Per scene: global view, attention target, and local views at the curriculum's zoom
    levels (the last ones are the RoI's sizes, 1-2x the input side), plus one deliberately
    wrong local view."""
    rng = random.Random(seed)
    locals_per_scene = len(ratios)
    glob, targets, digits, readable, loc, wrong = [], [], [], [], [], []
    for sc in sd.scenes(split, n):
        view, region = global_view(sc.image)
        glob.append(view)
        targets.append(box_target(sc.sign_box, region))
        digits.append(DIGITS.index(sc.digit))
        readable.append((sc.target_box[3] - sc.target_box[1]) * INPUT_SIDE / (region[3] - region[1]) >= READABLE_PX)
        for r in ratios:
            box = local_box(rng, sc, float(r) * rng.uniform(0.97, 1.0), good=True)
            if box is None:  # the digit is wider than the window: centre a window just large enough on it
                x0, y0, x1, y1 = sc.target_box
                box = square_box((x0 + x1) / 2, (y0 + y1) / 2, max(INPUT_SIDE * r, x1 - x0 + 2, y1 - y0 + 2),
                                 sc.image.size)
            loc.append(transmit(sc.image, *frame(box), CODEC).image)
        box = local_box(rng, sc, rng.uniform(1.0, 2.0), good=False)
        box = box or square_box(0, 0, INPUT_SIDE, sc.image.size)
        wrong.append(transmit(sc.image, *frame(box), CODEC).image)

    def pixels(images):
        out = []
        for i in range(0, len(images), 256):
            out.append(processor.image_processor(images[i:i + 256], return_tensors="pt")["pixel_values"])
        return torch.cat(out).to(torch.float16)

    return {
        "global": pixels(glob), "local": pixels(loc).view(n, locals_per_scene, 3, INPUT_SIDE, INPUT_SIDE),
        "wrong": pixels(wrong), "target": torch.tensor(np.stack(targets), dtype=torch.float32).flatten(1),
        "digit": torch.tensor(digits), "readable": torch.tensor(readable),
    }


class Prompts:
    """Token ids of every prompt the tasks produce, through the processor's chat template."""

    def __init__(self, processor):
        from lmms_eval.tasks.pope.utils import pope_doc_to_text
        from lmms_eval.tasks.textvqa.utils import textvqa_doc_to_text
        kwargs = {"pre_prompt": "", "post_prompt": POST_PROMPT, "ocr": False}
        self.processor = processor
        self.read = textvqa_doc_to_text({"question": sd.READ_QUESTION, "ocr_tokens": []}, kwargs)
        self.exist = {d: pope_doc_to_text({"question": sd.EXIST_QUESTION.format(digit=d)}, kwargs) for d in DIGITS}
        self._cache = {}
        tok = processor.tokenizer
        # After "ASSISTANT:" an answer starts with a space, as in LLaVA's training data; every
        # answer is one token (checked), then EOS.
        self.answer_ids = {a: tok(" " + a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                           for a in [*DIGITS, "yes", "no"]}
        assert all(len(v) == 2 for v in self.answer_ids.values()), self.answer_ids

    def ids(self, text: str, n_images: int) -> list[int]:
        key = (text, n_images)
        if key not in self._cache:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
            prompt = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                        add_generation_prompt=True)
            dummy = [np.zeros((INPUT_SIDE, INPUT_SIDE, 3), dtype=np.uint8)] * n_images
            self._cache[key] = self.processor(images=dummy, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
        return self._cache[key]


def collate(rows, pad_id, device="cpu"):
    """rows: (prompt_ids, answer_ids or [], pixel list). Right padding."""
    length = max(len(p) + len(a) for p, a, _ in rows)
    ids = torch.full((len(rows), length), pad_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    last = []
    for i, (p, a, _) in enumerate(rows):
        seq = p + a
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(p):len(seq)] = torch.tensor(a, dtype=torch.long) if a else labels[i, len(p):len(seq)]
        mask[i, :len(seq)] = 1
        last.append(len(p) - 1)
    pixels = torch.stack([px for _, _, pxs in rows for px in pxs]).float()
    return tuple(t.to(device) for t in (ids, labels, mask, torch.tensor(last), pixels))


def first_answer_logits(logits, labels):
    """Logits that predict each row's first answer token, and that token."""
    pos = (labels != -100).float().argmax(1)
    has = (labels != -100).any(1)
    rows = torch.arange(len(labels), device=labels.device)
    return logits[rows, pos - 1][has], labels[rows, pos][has]


# ----- training --------------------------------------------------------------------
def train(out: Path, seed: int = 0, steps: int = 2500, n_train: int = 3000, n_val: int = 300,
          batch: int = 20, lr: float = 2e-3, att_weight: float = 1.0, threads: int = 2, device: str = "cpu",
          log=print):
    from transformers import LlavaForConditionalGeneration

    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")  # bit-identical reruns are promised on the CPU
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer)
    prompts = Prompts(processor)
    pad = tokenizer.pad_token_id
    layer = attention_layer(config)

    train_data = make_data("train", n_train, seed + 1, processor)
    val_data = make_data("validation", n_val, seed + 2, processor)
    log(f"data: {n_train} train / {n_val} val scenes in {time.perf_counter() - started:.0f}s")

    model = LlavaForConditionalGeneration(config).to(device)
    model.config._attn_implementation = "eager"
    model.set_attn_implementation("eager")
    model.train()
    log(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    # Auxiliary digit head (training only, not saved): max-pooled projected patch features of
    # each correct local crop, and of each global view whose digit is readable, -> the digit.
    # It gives the vision tower a direct gradient for digit shapes instead of one routed
    # through the language model alone.
    digit_head = torch.nn.Linear(config.text_config.hidden_size, len(DIGITS)).to(device)
    captured = {}
    model.model.multi_modal_projector.register_forward_hook(lambda mod, inp, out: captured.__setitem__("f", out))
    optim = torch.optim.AdamW([*model.parameters(), *digit_head.parameters()], lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = random.Random(seed + 3)
    n_local = train_data["local"].shape[1]
    zoom = 1  # how many of the local zoom levels (smallest window first) are in use
    running = []

    def single_rows(idx, data):
        rows, targets = [], []
        for i in idx:
            kind = rng.random()
            d = DIGITS[int(data["digit"][i])]
            if kind < 0.4:
                rows.append((prompts.ids(prompts.read, 1), prompts.answer_ids[d], [data["global"][i]]))
                targets.append(data["target"][i])
            elif kind < 0.8:
                yes = rng.random() < 0.5
                asked = d if yes else rng.choice([x for x in DIGITS if x != d])
                rows.append((prompts.ids(prompts.exist[asked], 1), prompts.answer_ids["yes" if yes else "no"],
                             [data["global"][i]]))
                targets.append(data["target"][i])
            else:
                rows.append((prompts.ids(GENERIC_PROMPT, 1), [], [data["global"][i]]))
                targets.append(torch.full((GRID * GRID,), 1 / GRID**2))
        return rows, torch.stack(targets).to(device)

    def pair_rows(idx, data, zoom_levels):
        rows, reads, good = [], [], []
        for i in idx:
            d = DIGITS[int(data["digit"][i])]
            good.append(zoom_levels == 1 or rng.random() < 0.8)  # wrong crops once reading has started
            if good[-1]:
                local = data["local"][i, rng.randrange(zoom_levels)]
            else:
                local = data["wrong"][i]
            if rng.random() < 0.6:
                rows.append((prompts.ids(prompts.read, 2), prompts.answer_ids[d], [data["global"][i], local]))
                reads.append(True)
            else:
                yes = rng.random() < 0.5
                asked = d if yes else rng.choice([x for x in DIGITS if x != d])
                rows.append((prompts.ids(prompts.exist[asked], 2), prompts.answer_ids["yes" if yes else "no"],
                             [data["global"][i], local]))
                reads.append(False)
        return rows, torch.tensor(reads), torch.tensor(good)

    def attention_loss(attentions, ids, last, targets):
        att = attentions[layer].mean(1)  # (B, T, T), head-averaged as the adapter does
        rows = att[torch.arange(len(last), device=last.device), last]  # (B, T)
        image = ids == config.image_token_id
        img = rows[image].view(len(last), -1)[:, : GRID * GRID]
        p = img / img.sum(1, keepdim=True).clamp_min(1e-9)
        return -(targets * torch.log(p + 1e-9)).sum(1).mean()

    for step in range(steps):
        idx1 = [rng.randrange(n_train) for _ in range(batch)]
        rows, targets = single_rows(idx1, train_data)
        ids, labels, mask, last, pixels = collate(rows, pad, device)
        out1 = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels, output_attentions=True)
        l_att = attention_loss(out1.attentions, ids, last, targets)
        readable = train_data["readable"][idx1].to(device)
        l_global_digit = (torch.nn.functional.cross_entropy(digit_head(captured["f"][readable].amax(1)),
                                                            train_data["digit"][idx1].to(device)[readable])
                          if readable.any() else torch.zeros((), device=device))

        idx2 = [rng.randrange(n_train) for _ in range(batch)]
        rows2, reads, good = pair_rows(idx2, train_data, zoom)
        ids2, labels2, mask2, _, pixels2 = collate(rows2, pad, device)
        reads, good = reads.to(device), good.to(device)
        model.set_attn_implementation("sdpa")  # no weights needed here: the faster kernel
        out2 = model(input_ids=ids2, attention_mask=mask2, pixel_values=pixels2, labels=labels2)
        model.set_attn_implementation("eager")
        local_features = captured["f"][1::2][good].amax(1)  # (rows with a correct crop, hidden)
        l_digit = torch.nn.functional.cross_entropy(digit_head(local_features), train_data["digit"][idx2].to(device)[good])
        loss = out1.loss + out2.loss + att_weight * l_att + l_digit + l_global_digit
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()

        logits, answer = first_answer_logits(out2.logits.detach(), labels2)
        correct = (logits.argmax(-1) == answer)[reads]
        running = (running + correct.tolist())[-4 * batch:]
        if zoom < n_local and len(running) >= 2 * batch and np.mean(running) > 0.5:
            zoom += 1
            running = []
        if step + 1 >= int(0.6 * steps):  # the last 40%: every zoom level, whatever the accuracy
            zoom = n_local
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step} loss {out1.loss.item():.3f}/{out2.loss.item():.3f} att {l_att.item():.3f} "
                f"digit {l_digit.item():.3f} zoom {zoom} read2 {np.mean(running) if running else float('nan'):.2f} "
                f"t {time.perf_counter() - started:.0f}s")

    model.eval()
    metrics = evaluate(model, val_data, prompts, pad, layer, config, device)
    metrics["train_seconds"] = round(time.perf_counter() - started, 1)
    log(json.dumps(metrics))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config._attn_implementation = "sdpa"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_metrics.json").write_text(json.dumps({"seed": seed, "steps": steps, "n_train": n_train,
                                                           **metrics}, indent=1) + "\n")
    return metrics


@torch.no_grad()
def evaluate(model, data, prompts, pad, layer, config, device="cpu"):
    """Quick validation numbers from the first answer token's logits (argmax and
    min-entropy; the benchmark's numbers come from lmms-eval runs, not from here)."""
    from collab_eval.analysis.curves import auroc
    from collab_eval.uncertainty import token_uncertainties
    n = len(data["digit"])
    correct, entropy, hits = {}, [], []
    for name, images in (("global", lambda i: [data["global"][i]]),
                         ("local", lambda i: [data["global"][i], data["local"][i, -1]])):
        correct[name] = []
        for s in range(0, n, 50):
            rows = [(prompts.ids(prompts.read, len(images(i))), prompts.answer_ids[DIGITS[int(data["digit"][i])]],
                     images(i)) for i in range(s, min(n, s + 50))]
            ids, labels, mask, last, pixels = collate(rows, pad, device)
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=name == "global")
            logits, answer = first_answer_logits(out.logits, labels)
            correct[name] += (logits.argmax(-1) == answer).tolist()
            if name == "global":
                entropy += token_uncertainties(logits).min_entropy
                att = out.attentions[layer].mean(1)[torch.arange(len(last), device=last.device), last]
                peak = att[ids == config.image_token_id].view(len(last), -1).argmax(1)
                hits += (data["target"][s:s + len(last)][torch.arange(len(last)), peak.cpu()] > 0).tolist()
    right1, right2, entropy = np.array(correct["global"]), np.array(correct["local"]), np.array(entropy)
    # Retransmit the most uncertain half vs a random half (its expectation).
    gated = right1.copy()
    most_uncertain = np.argsort(-entropy, kind="stable")[: n // 2]
    gated[most_uncertain] = right2[most_uncertain]
    readable = data["readable"].numpy()
    auc = auroc(entropy, ~right1)  # None when every answer is right or every one wrong
    return {
        "read_global": round(float(right1.mean()), 4), "read_local": round(float(right2.mean()), 4),
        "read_global_readable": round(float(right1[readable].mean()), 4) if readable.any() else None,
        "auroc_global_error": None if auc is None else round(auc, 4),
        "gated_at_0.5": round(float(gated.mean()), 4),
        "random_at_0.5": round(float(0.5 * right1.mean() + 0.5 * right2.mean()), 4),
        "attention_peak_on_sign": round(float(np.mean(hits)), 4),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "weights" / "smalldetail-llava"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--att-weight", type=float, default=1.0)
    parser.add_argument("--device", default="cpu", help="cpu (the default) reproduces the shipped checkpoint bit for bit; cuda works too")
    args = parser.parse_args(argv)
    train(Path(args.out), seed=args.seed, steps=args.steps, n_train=args.n_train, n_val=args.n_val,
          batch=args.batch, lr=args.lr, att_weight=args.att_weight, device=args.device, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
