"""The work-order format: file names, validation, and the report the rest of wodrop acts on."""

from wodrop.workorder.names import ImageName, is_junk, is_temp, parse_image_name, processing_order
from wodrop.workorder.validate import (
    FileEntry,
    Issue,
    WorkOrderReport,
    find_work_orders,
    validate_work_order,
)

__all__ = [
    "FileEntry",
    "ImageName",
    "Issue",
    "WorkOrderReport",
    "find_work_orders",
    "is_junk",
    "is_temp",
    "parse_image_name",
    "processing_order",
    "validate_work_order",
]
