"""From slide to features: tissue detection, tiles at a physical scale, pathology encoders, TRIDENT-layout HDF5.

    tissue.py     CLAM's saturation threshold and morphology on an overview
    tiling.py     the pyramid level, tile sizes and the level-0 grid at a target µm/px, kept on tissue
    reader.py     tiles read and preprocessed in DataLoader worker processes
    encoders.py   encoders by name (resnet50-trunc, UNI, UNI2-h, Virchow2, H-optimus, Prov-GigaPath, timm:NAME)
    resnet.py     ResNet-50 after layer3 (torchvision's parameter names)
    vit.py        a Vision Transformer (timm's parameter names)
    writer.py     the HDF5 file, atomic and byte-deterministic
    qc.py         the QC picture and the tissue GeoJSON
    sources.py    which slides: a folder or a manifest
    settings.py   the settings that decide the numbers
    pipeline.py   all of it per slide, resumable

``abmil extract`` (``abmil.cli``) is the command; this package needs OpenSlide (the ``slides``
extra: ``pip install -e '.[slides]'`` in a clone).
"""
