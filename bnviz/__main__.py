import sys

from bnviz.numpy_sort import prefer_avx2_sort

prefer_avx2_sort()  # before anything imports numpy (see there)

from bnviz.cli import main  # noqa: E402

sys.exit(main())
