"""Model files: the models folder, checkpoint formats, LoRAs, the demo bundle, the loader.

* :mod:`~deployments.checkpoints.layout`: ComfyUI's ``models/`` layout, safe name resolution.
* :mod:`~deployments.checkpoints.tokenizer`: the SD1.x CLIP tokenizer, built without a hub.
* :mod:`~deployments.checkpoints.single_file`: LDM-layout single files (save and load).
* :mod:`~deployments.checkpoints.lora`: kohya and diffusers/peft LoRAs, merged into copies.
* :mod:`~deployments.checkpoints.demo`: the seeded demo bundle (``python -m deployments.checkpoints.demo``).
* :mod:`~deployments.checkpoints.loader`: :class:`ModelLoader`, LRU-cached, thread-safe.

NOTE: nothing is imported here, so importing a submodule stays cheap (no torch for layout).
"""
