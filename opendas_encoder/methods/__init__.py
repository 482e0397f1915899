"""Prompt and fine-tuning methods over a frozen open_clip model, one module each.

Every method registers its encoder class (``@register_method``) under its name and is found by
:func:`opendas_encoder.core.registry.get_method` through the ``opendas_encoder.methods`` entry points,
so :func:`~opendas_encoder.create_encoder` and :func:`~opendas_encoder.load_encoder` serve all of them:
``opendas`` (:mod:`.opendas`), ``vpt``, ``maple``, ``rpo``, ``cocoop``, ``wiseft-text`` /
``wiseft-visual`` / ``wiseft-both`` (:mod:`.wiseft`), ``cliplora``, ``promptsrc``. A method module says what its learned
tensors are; the forward pass is the core engine's (:mod:`opendas_encoder.core.engine`).

Trainable parameters on ViT-L-14 (paper Tab. 1 / 6): opendas 233,472; cocoop 77,616; vpt 786,432;
rpo 43,008; maple 18,935,808; wiseft-text 123,060,480; wiseft-visual 303,966,208; wiseft-both 427,026,688.
On ViT-B/16 (their papers): cliplora 184,320; promptsrc 46,080.
"""
