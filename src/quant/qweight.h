// quant/qweight.h — moved to core/qweight.h (QuantizedWeight needs only core, and backend/ uses
// it). Forwarding header for files not yet updated; include core/qweight.h instead.
#pragma once
#include "core/qweight.h"
