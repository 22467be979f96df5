"""The bundled demo model: digits MLP and CNN (:mod:`tvm_tasd.models.digits`), what ``tasd demo`` runs."""
