"""Host-side input: slide reading, tissue masks, online patching with grain, augmentation."""
