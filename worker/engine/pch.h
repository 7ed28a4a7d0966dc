// Precompiled header of the torch-using engine files and tests.
#include <torch/torch.h>
