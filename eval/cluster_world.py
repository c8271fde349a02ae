"""Precision and recall of data_prep's identity clustering on the identity world's renders.

    python -m eval.cluster_world --seed 31337 --identities 300 --renders 5 \
        --pack checkpoints/world/faces --out eval/results/cluster_world.json

Renders test identities of the given renderer seed (photo-folder style), embeds them with the face pack
through FaceAnalyzer (as data_prep does), clusters the embeddings with data_prep.cluster at each
threshold and scores the clusters against the true identities (pairwise precision and recall). The
threshold that suits a corpus depends on its recogniser: read it off this table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from models.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.cluster_world", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, required=True, help="renderer seed of the test identities")
    p.add_argument("--identities", type=int, default=300)
    p.add_argument("--renders", type=int, default=5, help="renders per identity")
    p.add_argument("--pack", default="checkpoints/world/faces", help="face pack folder")
    p.add_argument("--thresholds", default="0.5,0.6,0.7,0.75,0.8,0.85", help="comma-separated cosine thresholds")
    p.add_argument("--out", required=True, help="JSON to write")
    args = p.parse_args(argv)

    from data_prep.cluster import ClusterConfig, cluster_embeddings, pairwise_scores
    from data_prep.faceworld.attributes import split_range
    from data_prep.faceworld.render import FaceWorld
    from encoder.face_analysis import FaceAnalyzer, FaceRejected
    from eval.bench.common import environment
    from models.atomic import write_json_atomic

    first = split_range("test")[0]
    ids = np.repeat(np.arange(first, first + args.identities), args.renders)
    renders = np.tile(np.arange(args.renders), args.identities)
    images = FaceWorld(args.seed, 64).render(ids, renders, mode="portrait").images.numpy()
    analyzer = FaceAnalyzer.from_pack(args.pack)
    embeddings, truth, missed = [], [], 0
    for image, identity in zip(images, ids):
        try:
            embeddings.append(analyzer.analyze(image).embedding)
            truth.append(int(identity))
        except FaceRejected:
            missed += 1
    emb = np.stack(embeddings)
    results = []
    for threshold in (float(t) for t in args.thresholds.split(",")):
        labels = cluster_embeddings(emb, ClusterConfig(threshold=threshold))
        s = pairwise_scores(labels, truth)
        results.append({"threshold": threshold, "precision": round(float(s.precision), 4),
                        "recall": round(float(s.recall), 4), "clusters": int(len(set(labels.tolist())))})
        print(f"threshold {threshold:.2f}: precision {s.precision:.4f} recall {s.recall:.4f} "
              f"({results[-1]['clusters']} clusters for {args.identities} people)")
    write_json_atomic(args.out, {"renderer_seed": args.seed, "identities": args.identities,
                                 "renders_each": args.renders, "faces_found": len(emb), "faces_missed": missed,
                                 "face_pack": args.pack, "results": results, **environment("faceworld")})
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
