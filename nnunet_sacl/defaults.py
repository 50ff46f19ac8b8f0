"""Values that the library uses and the command line shows, defined once in a module that imports nothing: the
modules that use them (``analysis.evaluation``, ``dataset_conversion.demo_data``) load numpy and SimpleITK at
import, and ``nnunet-sacl --help`` starts without them (tests/test_messages.py). The command line imports its other
defaults from the modules that define them, which load nothing heavy at import: ``nnunet_sacl.train``,
``nnunet_sacl.demo``, ``analysis.study``, ``dataset_conversion.converters`` and ``dataset_conversion.submission``.
"""

DEFAULT_TOLERANCE_MM = 2.0                      # the NSD tolerance of analysis.evaluation
NSD_METHODS = ("voxel", "surface")              # analysis.evaluation.normalized_surface_dice's methods
SDIST_NAME = "totalsegmentator-2.18.0.tar.gz"   # the demo data's source file (dataset_conversion.demo_data)
