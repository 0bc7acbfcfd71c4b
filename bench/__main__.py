import sys

from bnviz.numpy_sort import prefer_avx2_sort

prefer_avx2_sort()  # as the CLI does, before numpy is imported: the bench measures the engine the CLI runs

from bench.run import main  # noqa: E402

sys.exit(main())
