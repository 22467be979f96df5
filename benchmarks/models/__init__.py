"""The benchmark model zoo: real pretrained models that install offline, exported for TVM, with their data.

``minilm`` (all-MiniLM-L6-v2, STS Spearman), ``crepe`` (CREPE pitch CNN,
RPA on synthetic tones), ``ppocr`` (PP-OCR text recognition and
orientation on rendered lines), ``efficientnet`` (EfficientNet-Lite0,
ImageNet weights, top-1 agreement with the dense network on crops of
scikit-image's sample photographs), ``sparse`` (unstructured-sparse variants),
``export`` (PyTorch → ONNX at fixed shapes, source names kept). Used by the
benchmarks and the tests; not part of the installed library (only the
digits demo model ships, in ``tvm_tasd.models``).
"""
