"""Reading and writing medical images: DICOM, NIfTI, RT-STRUCT. The only place pydicom is used."""
