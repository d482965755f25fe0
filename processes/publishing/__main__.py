"""``python -m aquamask.processes.publishing retry PRODUCT_ID``: the background retry process
the publishing service starts (``service.RETRY_MODULE``)."""
import sys

from aquamask.processes.publishing.service import main

sys.exit(main())
