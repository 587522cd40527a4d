import sys

from hscmae.data import main

sys.exit(main())
