"""``python -m feclip.toy_clip``: pretrain the toy CLIP (see :mod:`feclip.toy_clip.pretrain`)."""

from feclip.toy_clip.pretrain import main

raise SystemExit(main())
