"""Input: slide reading, tissue masks, the slide index, online patching with grain, multi-crop
augmentation on the host, iBOT block masks, and the colour augmentation that runs in the jitted
step (`device_augment`)."""
