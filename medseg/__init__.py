"""medseg: 3D medical volume segmentation from DICOM to RT-STRUCT."""

__version__ = "0.1.0"
