"""Python side of scripts/bench_embed.sh: time sentence-transformers or
mlx-embeddings on the same sentences mlxrs embeds, and print one JSON line.

    python scripts/bench_embed_py.py st|mlx MODEL SENTENCES BATCH THREADS [DEVICE]

st:  SentenceTransformer(MODEL).encode(texts, batch_size=BATCH) in float32
     (DEVICE cpu or cuda; torch threads = THREADS).
mlx: mlx_embeddings.utils.load(MODEL), then per batch the HF tokenizer
     (padding, truncation at the model's max_seq_length) and
     model(input_ids, attention_mask).text_embeds, evaluated per batch.
     Batches are formed from length-sorted texts, as sentence-transformers
     and mlxrs do, so all three pad alike. MLX's default device is used (the
     GPU with the mlx-cuda wheel).
Both: one warm-up over 2 batches, then one timed pass; tokenization included.
"""
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main():
    kind, model, path, batch, threads = sys.argv[1:6]
    device = sys.argv[6] if len(sys.argv) > 6 else "cpu"
    batch, threads = int(batch), int(threads)
    texts = open(path, encoding="utf-8").read().splitlines()
    if kind == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        m = SentenceTransformer(model, device=device, model_kwargs={"dtype": torch.float32})
        m.encode(texts[: 2 * batch], batch_size=batch)
        t = time.perf_counter()
        m.encode(texts, batch_size=batch)
        s = time.perf_counter() - t
        print(json.dumps({"sentences": len(texts), "seconds": s,
                          "sentences_per_sec": len(texts) / s,
                          "version": "torch " + torch.__version__ + " " + device}))
        return
    import mlx.core as mx
    from mlx_embeddings.utils import load
    import mlx_embeddings

    m, tok = load(model)
    hf = getattr(tok, "_tokenizer", tok)
    max_len = 256
    try:
        cfg = json.load(open(f"{model}/sentence_bert_config.json"))
        max_len = int(cfg.get("max_seq_length", max_len))
    except OSError:
        pass

    def run(ts):
        order = sorted(range(len(ts)), key=lambda i: -len(ts[i]))
        out = [None] * len(ts)
        for b in range(0, len(ts), batch):
            idx = order[b:b + batch]
            enc = hf([ts[i] for i in idx], return_tensors="np", padding=True,
                     truncation=True, max_length=max_len)
            e = m(mx.array(enc["input_ids"]), attention_mask=mx.array(enc["attention_mask"])).text_embeds
            mx.eval(e)
            for j, i in enumerate(idx):
                out[i] = e[j]
        return out

    run(texts[: 2 * batch])
    t = time.perf_counter()
    run(texts)
    s = time.perf_counter() - t
    print(json.dumps({"sentences": len(texts), "seconds": s,
                      "sentences_per_sec": len(texts) / s,
                      "version": f"mlx-embeddings {getattr(mlx_embeddings, '__version__', '?')}, "
                                 f"mlx {mx.__version__} {mx.default_device()}"}))


if __name__ == "__main__":
    main()
