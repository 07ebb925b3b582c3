"""Images: what an agent writes to a node's disk, and how it gets it.

* :mod:`.formats`: compression from the first bytes; one pass computing the
  SHA-256, the size and the decompressed size;
* :mod:`.registry`: images registered by name (``conductor image add``),
  copied into the image directory;
* :mod:`.cache`: remote (http/https) images downloaded once, verified, kept
  under a size bound;
* :mod:`.localsums`: checksums of ``file://`` images, remembered by path,
  size and modification time;
* :mod:`.tickets`: the signed URLs agents fetch images with;
* :mod:`.sources`: what a deploy gives its agent for an ``image_source``.

See docs/images.md.
"""
