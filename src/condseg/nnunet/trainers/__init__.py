"""The folder ``nnUNet_extTrainer`` points at (``condseg nnunet trainers`` prints it).

nnU-Net imports each module here as a top-level module when a ``-tr`` name is not among its
own trainers; :mod:`condseg_variants` names condseg's variants by absolute import, so the
classes it finds are those of :mod:`condseg.nnunet.variants`.
"""
