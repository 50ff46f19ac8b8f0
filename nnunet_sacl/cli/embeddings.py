"""``nnunet-sacl embeddings``: t-SNE and silhouette of organ embeddings before vs after SACL pretraining
(``nnunet_sacl.analysis.embeddings``)."""
from nnunet_sacl.cli import Command, refusing

EXAMPLE = "nnunet-sacl embeddings -d 17 -c 3d_fullres -f 0 -tr SACLTrainer \\\n    -o embeddings.png"


def add_arguments(p) -> None:
    p.add_argument("-d", required=True, help="dataset name or id")
    p.add_argument("-c", default="3d_fullres", help="configuration")
    p.add_argument("-f", default="0", help="fold")
    p.add_argument("-tr", default="SACLTrainer", help="trainer that wrote the model")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("--weights", help="pretrained weights (default: fold_F/checkpoint_sacl_encoder.pth)")
    p.add_argument("--max-cases", type=int, default=20,
                   help="preprocessed training cases whose patches give the embeddings (default 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("-o", default="embeddings_tsne.png", help="output PNG")


def run(args) -> int:
    from nnunet_sacl.analysis.embeddings import model_embeddings
    from nnunet_sacl.nnunet.checkpoints import UnreadableCheckpoint
    with refusing(FileNotFoundError, UnreadableCheckpoint):
        scores = model_embeddings(args.d, args.c, args.f, args.tr, args.p, args.weights, args.max_cases, args.o,
                                  args.device)
    for title, score in scores.items():
        print(f"silhouette (cosine) {title}: {score:.4f}")
    print(f"t-SNE picture: {args.o}")
    return 0


COMMANDS = [Command("embeddings", "t-SNE of organ embeddings before vs after SACL pretraining, with silhouette score",
                    EXAMPLE, add_arguments, run)]
