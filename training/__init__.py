"""Training the model backends on labelled studies: a LoRA adapter for the MedGemma reading
(`trauma-node finetune-reading`) and the 2.5D U-Net (`trauma-node train-segmentation`).

Both read a dataset through evaluation.dataset (the RSNA 2023 layout or a site's folder),
build their inputs with the pipeline's own code (the reading's prompt, the U-Net's 2.5D
windowed stacks), and write what the node loads with no conversion. Everything they write
carries the research-use statement and names the data it came from.
"""
