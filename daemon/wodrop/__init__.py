"""wodrop: drop-folder daemon that packs work-order folders into batches and uploads them resumably."""

__version__ = "0.1.0"
