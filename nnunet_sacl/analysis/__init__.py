"""What came out: Dice / NSD evaluation and paired comparison, organ-embedding clusters, studies of trainers x folds
with their cost, and checks of pretrained weights before training."""
